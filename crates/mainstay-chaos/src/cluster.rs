//! The members as real processes, each in its own namespace: start, kill -9,
//! SIGSTOP/SIGCONT, restart on the same data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::net::Net;

/// Client port of every member (each has its own address).
pub const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// One member process slot.
struct Member {
    child: Option<Child>,
    stopped: bool,
}

/// The cluster's processes.
pub struct Cluster {
    binary: PathBuf,
    work: PathBuf,
    members: Vec<Member>,
    initial: String,
}

impl Cluster {
    /// Starts `size` members of a new cluster.
    pub fn start(binary: PathBuf, work: PathBuf, net: &Net, size: usize) -> anyhow::Result<Self> {
        let initial = (0..size)
            .map(|i| format!("c{i}=http://{}:{PEER_PORT}", net.member_ip(i)))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            binary,
            work,
            members: (0..size)
                .map(|_| Member {
                    child: None,
                    stopped: false,
                })
                .collect(),
            initial,
        };
        for i in 0..size {
            cluster.spawn(net, i)?;
        }
        Ok(cluster)
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    fn spawn(&mut self, net: &Net, i: usize) -> anyhow::Result<()> {
        let ip = net.member_ip(i);
        let client = format!("http://{ip}:{CLIENT_PORT}");
        let peer = format!("http://{ip}:{PEER_PORT}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join(format!("c{i}.log")))
            .context("member log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &net.namespace(i)])
            .arg(&self.binary)
            .arg("serve")
            .args(["--name", &format!("c{i}")])
            .arg("--data-dir")
            .arg(self.work.join(format!("c{i}")))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial])
            .args(["--initial-cluster-token", "chaos"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("member log")?)
            .stderr(log)
            .spawn()
            .context("start member")?;
        self.members[i] = Member {
            child: Some(child),
            stopped: false,
        };
        Ok(())
    }

    fn signal(&self, i: usize, signal: &str) {
        if let Some(child) = &self.members[i].child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// kill -9, and reap.
    pub fn kill(&mut self, i: usize) {
        if self.members[i].stopped {
            self.signal(i, "-CONT");
        }
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].stopped = false;
    }

    /// Whether member `i` is running (not killed, not exited).
    pub fn running(&mut self, i: usize) -> bool {
        match &mut self.members[i].child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Restarts a member that is not running, on its data.
    pub fn restart(&mut self, net: &Net, i: usize) -> anyhow::Result<()> {
        if !self.running(i) {
            self.kill(i);
            self.spawn(net, i)?;
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "-STOP");
        self.members[i].stopped = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) {
        if self.members[i].stopped {
            self.signal(i, "-CONT");
            self.members[i].stopped = false;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
