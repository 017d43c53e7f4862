//! `deploy/rabbitmq-cluster.sh`'s three RabbitMQ nodes, for the tests that
//! must disturb a cluster: started by [`Cluster::start`], stopped (their
//! data deleted) when dropped. Shared by the integration tests and the
//! chaos harness (each includes this file with `#[path]`).

/// AMQP port of node N is `BASE + N`.
const BASE: u16 = 5690;
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq-cluster.sh");
const NODE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rabbitmq-node.sh");

pub struct Cluster;

impl Cluster {
    /// Runs the script with `args`; its output, trimmed.
    fn run(args: &[&str]) -> String {
        let out = std::process::Command::new(SCRIPT).args(args).output().expect("rabbitmq-cluster.sh runs");
        assert!(out.status.success(), "rabbitmq-cluster.sh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts the three nodes and joins them; returns with the cluster up.
    pub fn start() -> Self {
        println!("{}", Self::run(&["start"]));
        Self
    }

    /// The nodes' AMQP URLs, node 1 first.
    pub fn urls(&self) -> Vec<String> {
        Self::run(&["urls"]).lines().map(str::to_owned).collect()
    }

    /// `kill -9` of node `node` (1..=3); what the script said.
    pub fn kill(&self, node: u16) -> String {
        Self::run(&["kill", &node.to_string()])
    }

    /// Starts node `node` again on its data; what the script said.
    pub fn revive(&self, node: u16) -> String {
        Self::run(&["revive", &node.to_string()])
    }

    /// The nodes (1..=3) with client connections, as the cluster sees them
    /// (asking the first node that answers).
    pub fn connected(&self) -> Vec<u16> {
        for name in ["hookwire-c1", "hookwire-c2", "hookwire-c3"] {
            let out = std::process::Command::new(NODE).args(["ctl", name, "list_connections", "-q", "port"]).output();
            let Ok(out) = out else { continue };
            if !out.status.success() {
                continue; // that node is down: ask the next
            }
            let mut nodes: Vec<u16> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<u16>().ok())
                .map(|port| port - BASE)
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            return nodes;
        }
        Vec::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT).arg("stop").output();
    }
}
