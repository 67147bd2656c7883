//! Hosts on one machine: a network namespace per region, joined by a
//! "WAN" bridge that lives in a namespace of its own, so that cutting a
//! region off is a real link going down (TCP sees silence, not a reset).
//! Each region also has a management link to the harness (the root
//! namespace): the suite's miners and probes use it, so a WAN cut never
//! disconnects a region's own miners, as on a real site.
//!
//! Needs root (`ip netns`, veth pairs, Debian's iproute2). Everything is
//! removed on drop; leftovers of a killed run are removed by the next one.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ChaosError;

/// Names start with this: leftovers are found by it.
const PREFIX: &str = "tbgc";

/// One region's host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Its network namespace.
    pub ns: String,
    /// Its address on the WAN, where the other regions reach it.
    pub wan_ip: Ipv4Addr,
    /// Its address on the management link, where the harness reaches it.
    pub mgmt_ip: Ipv4Addr,
    /// The harness's address on that link (the source of the suite's miners).
    pub harness_ip: Ipv4Addr,
    /// The WAN bridge's port of this host (in the WAN namespace).
    bridge_port: String,
    /// The root namespace's end of the management link.
    root_link: String,
}

/// The hosts and the WAN between them.
#[derive(Debug)]
pub struct Wan {
    pub hosts: Vec<Host>,
    wan_ns: String,
}

/// Runs `ip args`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), ChaosError> {
    let output = Command::new(ip_binary())
        .args(args)
        .output()
        .map_err(|e| ChaosError::io("running ip (Debian package iproute2)", e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Failed(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn ip_binary() -> PathBuf {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("ip"))
}

/// Whether this process can make namespaces (root, and `ip` installed).
pub fn available() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective_uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if effective_uid != Some("0") {
        return Err(
            "the multi-region scenarios put each region on a host of its own \
                    (network namespaces), which needs root; run as root, or leave them out \
                    with scripts/chaos.sh --skip region-primary-lost,region-partition,\
                    nats-server-lost,nats-all-down,relay-restart,primary-long-outage"
                .into(),
        );
    }
    if !ip_binary().is_file() {
        return Err("`ip` is missing (apt-get install iproute2)".into());
    }
    Ok(())
}

/// Output of `ip args` (empty when it fails: leftovers are best effort).
fn ip_output(args: &[&str]) -> String {
    Command::new(ip_binary())
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether a name of ours belongs to a run whose process is gone:
/// `tbgc<pid>w`, `tbgc<pid>h<i>`, `tbgc<pid>m<i>`.
fn is_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what runs whose process is gone (a SIGKILLed harness) left:
/// the processes still inside their namespaces (a namespace lives on while
/// one runs in it), the namespaces, and root-namespace links.
fn remove_leftovers() {
    for line in ip_output(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if !is_leftover(name) {
            continue;
        }
        let pids = ip_output(&["netns", "pids", name]);
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-9").args(&pids).status();
        }
        let _ = ip(&["netns", "del", name]);
    }
    // `N: tbgc123m0@if2: <...>`
    for line in ip_output(&["-o", "link", "show"]).lines() {
        let name = line
            .split(':')
            .nth(1)
            .map(|field| field.trim().split('@').next().unwrap_or(""))
            .unwrap_or("");
        if is_leftover(name) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// A 10.250.<n>.0/24 no interface of this machine uses yet, starting from
/// one the pid picks (two live runs never share one).
fn free_mgmt_subnet(pid: u32) -> Result<u8, ChaosError> {
    let addresses = ip_output(&["-o", "-4", "addr", "show"]);
    (0..200u32)
        .map(|step| ((pid + step) % 200) as u8 + 20)
        .find(|n| !addresses.contains(&format!("inet 10.250.{n}.")))
        .ok_or_else(|| ChaosError::Failed("no free 10.250.x.0/24 for the management links".into()))
}

impl Wan {
    /// `count` hosts on one WAN: 10.201.0.<i+1>/24 each; the management
    /// link of host i is a /30 of 10.250.<n>.0/24 (n from the pid), the
    /// harness at .1 and the host at .2 of it.
    pub fn create(count: usize) -> Result<Wan, ChaosError> {
        available().map_err(ChaosError::Failed)?;
        remove_leftovers();
        let pid = std::process::id();
        let subnet = free_mgmt_subnet(pid)?;
        let wan_ns = format!("{PREFIX}{pid}w");
        let mut wan = Wan {
            hosts: Vec::new(),
            wan_ns: wan_ns.clone(),
        };
        ip(&["netns", "add", &wan_ns])?;
        ip(&["-n", &wan_ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &wan_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &wan_ns, "link", "set", "br0", "up"])?;
        for index in 0..count {
            let n = index as u8;
            let host = Host {
                ns: format!("{PREFIX}{pid}h{index}"),
                wan_ip: Ipv4Addr::new(10, 201, 0, n + 1),
                mgmt_ip: Ipv4Addr::new(10, 250, subnet, 4 * n + 2),
                harness_ip: Ipv4Addr::new(10, 250, subnet, 4 * n + 1),
                bridge_port: format!("p{index}"),
                root_link: format!("{PREFIX}{pid}m{index}"),
            };
            // Pushed first: a failure below still removes what was made.
            wan.hosts.push(host.clone());
            let ns = host.ns.as_str();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // WAN: eth0 in the host, its peer a port of the bridge.
            ip(&[
                "-n",
                ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &host.bridge_port,
                "netns",
                &wan_ns,
            ])?;
            ip(&[
                "-n",
                &wan_ns,
                "link",
                "set",
                &host.bridge_port,
                "master",
                "br0",
            ])?;
            ip(&["-n", &wan_ns, "link", "set", &host.bridge_port, "up"])?;
            let wan_cidr = format!("{}/24", host.wan_ip);
            ip(&["-n", ns, "addr", "add", &wan_cidr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            // Management: mgmt0 in the host, its peer in the root namespace.
            ip(&[
                "link",
                "add",
                &host.root_link,
                "type",
                "veth",
                "peer",
                "name",
                "mgmt0",
                "netns",
                ns,
            ])?;
            let harness_cidr = format!("{}/30", host.harness_ip);
            ip(&["addr", "add", &harness_cidr, "dev", &host.root_link])?;
            ip(&["link", "set", &host.root_link, "up"])?;
            let mgmt_cidr = format!("{}/30", host.mgmt_ip);
            ip(&["-n", ns, "addr", "add", &mgmt_cidr, "dev", "mgmt0"])?;
            ip(&["-n", ns, "link", "set", "mgmt0", "up"])?;
        }
        Ok(wan)
    }

    /// `program args` to run inside host `index`'s namespace.
    pub fn command(&self, index: usize, program: &Path, args: &[&str]) -> (PathBuf, Vec<String>) {
        let mut full = vec![
            "netns".to_owned(),
            "exec".to_owned(),
            self.hosts[index].ns.clone(),
            program.to_string_lossy().into_owned(),
        ];
        full.extend(args.iter().map(|arg| (*arg).to_owned()));
        (ip_binary(), full)
    }

    /// Cuts host `index` off the WAN (its bridge port down): the other
    /// hosts and it hear silence from each other; its management link stays.
    pub fn isolate(&self, index: usize) -> Result<(), ChaosError> {
        let port = &self.hosts[index].bridge_port;
        ip(&["-n", &self.wan_ns, "link", "set", port, "down"])
    }

    /// Puts host `index` back on the WAN.
    pub fn rejoin(&self, index: usize) -> Result<(), ChaosError> {
        let port = &self.hosts[index].bridge_port;
        ip(&["-n", &self.wan_ns, "link", "set", port, "up"])
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["link", "del", &host.root_link]);
            let _ = ip(&["netns", "del", &host.ns]);
        }
        let _ = ip(&["netns", "del", &self.wan_ns]);
    }
}
