//! One network namespace per member on a bridge, and nftables rules inside each
//! namespace for partitions. Addresses are in 10.77.<subnet>.0/24, inside
//! namespaces this program makes and removes; the clients reach the members
//! from the host through the bridge (10.77.<subnet>.254).

use std::process::Command;

use anyhow::{Context, bail};

/// The namespaces and bridge of one run.
pub struct Net {
    subnet: u8,
    members: usize,
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the host has a network device of this name.
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

impl Net {
    /// Creates the bridge and one namespace per member (removing leftovers of
    /// an earlier run with the same subnet first).
    pub fn create(subnet: u8, members: usize) -> anyhow::Result<Net> {
        let net = Net { subnet, members };
        net.remove();
        let bridge = net.bridge();
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.host_ip()),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for i in 0..members {
            let ns = net.namespace(i);
            let veth = net.veth(i);
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &veth, "master", &bridge, "up"])?;
            let address = format!("{}/24", net.member_ip(i));
            run(&["ip", "-n", &ns, "addr", "add", &address, "dev", "eth0"])?;
            run(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "chaos",
            ])?;
            let spec = "{ type filter hook output priority 0; }";
            run(&[
                "ip", "netns", "exec", &ns, "nft", "add", "chain", "inet", "chaos", "out", spec,
            ])?;
        }
        Ok(net)
    }

    /// The host end of member `i`'s veth pair.
    fn veth(&self, i: usize) -> String {
        format!("msv{}-{i}", self.subnet)
    }

    fn bridge(&self) -> String {
        format!("msbr{}", self.subnet)
    }

    /// Member `i`'s namespace.
    pub fn namespace(&self, i: usize) -> String {
        format!("mschaos{}-{i}", self.subnet)
    }

    /// Member `i`'s address.
    pub fn member_ip(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, i + 1)
    }

    fn host_ip(&self) -> String {
        format!("10.77.{}.254", self.subnet)
    }

    /// Drops everything member `from` sends to member `to` (a one-way cut; the
    /// rule sits in `from`'s namespace, so `to` still reaches `from`).
    pub fn cut(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let ns = self.namespace(from);
        let ip = self.member_ip(to);
        run(&[
            "ip", "netns", "exec", &ns, "nft", "add", "rule", "inet", "chaos", "out", "ip",
            "daddr", &ip, "drop",
        ])
    }

    /// Cuts `a` from every other member both ways (clients still reach it).
    pub fn isolate(&self, a: usize) -> anyhow::Result<()> {
        for b in (0..self.members).filter(|b| *b != a) {
            self.cut(a, b)?;
            self.cut(b, a)?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 0..self.members {
            let ns = self.namespace(i);
            run(&[
                "ip", "netns", "exec", &ns, "nft", "flush", "chain", "inet", "chaos", "out",
            ])?;
        }
        Ok(())
    }

    /// Removes the veths, namespaces and the bridge (errors ignored: some may
    /// be gone). The host end of each veth is deleted first and explicitly:
    /// deleting a namespace frees its devices later, in a kernel work queue,
    /// so a run right after another one found `msv90-1` still there.
    pub fn remove(&self) {
        let slots = self.members.max(5);
        for i in 0..slots {
            let _ = run(&["ip", "link", "del", &self.veth(i)]);
            let _ = run(&["ip", "netns", "del", &self.namespace(i)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge()]);
        // Bounded wait until no device of this run is left.
        for _ in 0..50 {
            let left =
                (0..slots).any(|i| link_exists(&self.veth(i))) || link_exists(&self.bridge());
            if !left {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
