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
            let veth = format!("msv{subnet}-{i}");
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

    /// Removes the namespaces and the bridge (errors ignored: some may be gone).
    pub fn remove(&self) {
        for i in 0..self.members.max(5) {
            let _ = run(&["ip", "netns", "del", &self.namespace(i)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}
