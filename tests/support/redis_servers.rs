//! Private Redis servers for tests, started in a temporary directory and killed on drop: a Redis
//! Cluster of three masters ([`RedisCluster`]) and one node behind TLS ([`TlsRedis`]), each
//! optionally with a password and TLS. Without `redis-server` and `redis-cli` on the PATH (or a
//! `redis-server` built without TLS, for TLS), `start` prints "skipping: ..." and answers `None`.
//!
//! ```ignore
//! let Some(cluster) = RedisCluster::start() else { return };
//! let url = cluster.url(); // "redis://127.0.0.1:p1,redis://127.0.0.1:p2,redis://127.0.0.1:p3"
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a private Redis is reached: password, TLS.
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `requirepass` (and `masterauth`): URLs then carry `:password@`.
    pub password: Option<String>,
    /// Serve TLS only (`rediss://`), with a certificate for 127.0.0.1 signed by a fresh CA
    /// ([`RedisCluster::ca_pem`], [`TlsRedis::ca_pem`]).
    pub tls: bool,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> std::io::Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "tower-gemini-{what}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` distinct free loopback ports (all held until all are found, then released: a small
/// race other tests accept too).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("its address").port())
        .collect()
}

fn installed(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The CA and server certificate files a TLS server uses.
struct Certs {
    ca_pem: String,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// A fresh CA, and a certificate for 127.0.0.1 and localhost signed by it, in `dir`.
fn make_certs(dir: &Path) -> Certs {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tower-gemini test Redis CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let certs = Certs {
        ca_pem: ca.pem(),
        ca_file: dir.join("ca.pem"),
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
    };
    std::fs::write(&certs.ca_file, &certs.ca_pem).unwrap();
    std::fs::write(&certs.cert_file, cert.pem()).unwrap();
    std::fs::write(&certs.key_file, key.serialize_pem()).unwrap();
    certs
}

/// One `redis-server` child.
struct Node {
    port: u16,
    child: Child,
}

/// Starts `redis-server` on `port` in `dir` with `extra` arguments; its log goes to
/// `{dir}/{port}.log`.
fn spawn(
    dir: &Path,
    port: u16,
    options: &RedisOptions,
    certs: Option<&Certs>,
    extra: &[String],
) -> std::io::Result<Node> {
    let mut args: Vec<String> = vec![
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
        "--daemonize".into(),
        "no".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--logfile".into(),
        dir.join(format!("{port}.log")).display().to_string(),
    ];
    match certs {
        Some(c) => args.extend([
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            c.cert_file.display().to_string(),
            "--tls-key-file".into(),
            c.key_file.display().to_string(),
            "--tls-ca-cert-file".into(),
            c.ca_file.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]),
        None => args.extend(["--port".into(), port.to_string()]),
    }
    if let Some(pw) = &options.password {
        args.extend([
            "--requirepass".into(),
            pw.clone(),
            "--masterauth".into(),
            pw.clone(),
        ]);
    }
    args.extend(extra.iter().cloned());
    let child = Command::new("redis-server")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Node { port, child })
}

/// `redis-cli` with the connection options for `port` (password, TLS) and `args`.
fn cli(port: u16, options: &RedisOptions, certs: Option<&Certs>, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(pw) = &options.password {
        cmd.args(["-a", pw, "--no-auth-warning"]);
    }
    if let Some(c) = certs {
        cmd.arg("--tls").arg("--cacert").arg(&c.ca_file);
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (up to `limit`) until `ready` holds; false if a node died or time ran out.
fn wait_until(nodes: &mut [Node], limit: Duration, mut ready: impl FnMut(u16) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if nodes
            .iter_mut()
            .any(|n| n.child.try_wait().ok().flatten().is_some())
        {
            return false;
        }
        if nodes.iter().all(|n| ready(n.port)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of each node's log, to say why a start failed (the directory goes on drop).
fn log_tails(dir: &Path, nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| {
            let log =
                std::fs::read_to_string(dir.join(format!("{}.log", n.port))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(3)..].join("\n  ");
            format!("\n node {}:\n  {tail}", n.port)
        })
        .collect()
}

fn kill(nodes: &mut [Node]) {
    for n in nodes {
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
}

fn url(scheme: &str, options: &RedisOptions, port: u16) -> String {
    match &options.password {
        Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{port}"),
        None => format!("{scheme}://127.0.0.1:{port}"),
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    options: RedisOptions,
    certs: Option<Certs>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts a plain Cluster (no password, no TLS); `None` (after saying why) when it cannot.
    pub fn start() -> Option<RedisCluster> {
        RedisCluster::start_with(RedisOptions::default())
    }

    /// Starts a Cluster with these options; `None` (after saying why) when it cannot.
    pub fn start_with(options: RedisOptions) -> Option<RedisCluster> {
        for tool in ["redis-server", "redis-cli"] {
            if !installed(tool) {
                println!("skipping: {tool} is not installed");
                return None;
            }
        }
        let dir = TempDir::new("redis-cluster").expect("a temporary directory");
        let certs = options.tls.then(|| make_certs(&dir.0));
        let mut nodes = Vec::new();
        // Three client ports and three cluster bus ports, all distinct.
        let ports = free_ports(6);
        for (&port, &bus) in ports[..3].iter().zip(&ports[3..]) {
            let mut extra: Vec<String> = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                dir.0
                    .join(format!("nodes-{port}.conf"))
                    .display()
                    .to_string(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ];
            if options.tls {
                extra.extend(["--tls-cluster".into(), "yes".into()]);
            }
            match spawn(&dir.0, port, &options, certs.as_ref(), &extra) {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    kill(&mut nodes);
                    println!("skipping: redis-server did not start: {e}");
                    return None;
                }
            }
        }
        let mut cluster = RedisCluster {
            nodes,
            options,
            certs,
            _dir: dir,
        };
        let (options, certs) = (&cluster.options, cluster.certs.as_ref());
        if !wait_until(&mut cluster.nodes, Duration::from_secs(10), |port| {
            cli(port, options, certs, &["PING"]).is_some_and(|s| s.trim() == "PONG")
        }) {
            println!(
                "skipping: the cluster's redis-server nodes did not start:{}",
                log_tails(&cluster._dir.0, &cluster.nodes)
            );
            return None;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let first = cluster.nodes[0].port;
        if cli(first, options, certs, &create).is_none() {
            println!("skipping: `redis-cli --cluster create` failed");
            return None;
        }
        // Every node agrees: all slots served, all three known.
        if !wait_until(&mut cluster.nodes, Duration::from_secs(20), |port| {
            cli(port, options, certs, &["CLUSTER", "INFO"]).is_some_and(|info| {
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains("cluster_known_nodes:3")
            })
        }) {
            println!(
                "skipping: the cluster did not reach cluster_state:ok:{}",
                log_tails(&cluster._dir.0, &cluster.nodes)
            );
            return None;
        }
        Some(cluster)
    }

    /// The seed list, every node: `redis://127.0.0.1:p1,redis://127.0.0.1:p2,...`
    /// (`rediss://` with TLS, `:password@` with a password).
    pub fn url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        self.nodes
            .iter()
            .map(|n| url(scheme, &self.options, n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One seed node marked as a Cluster: `redis://127.0.0.1:p1/?cluster=true`.
    pub fn single_seed_url(&self) -> String {
        let scheme = if self.options.tls { "rediss" } else { "redis" };
        format!(
            "{}/?cluster=true",
            url(scheme, &self.options, self.nodes[0].port)
        )
    }

    /// The nodes' ports, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The nodes' process ids, in start order (to stop or pause one: `kill -STOP`).
    pub fn node_pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.child.id()).collect()
    }

    /// The CA (PEM) that signed the nodes' certificate, with TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.certs.as_ref().map(|c| c.ca_pem.as_str())
    }

    /// Runs `redis-cli` against node `i` (0..3) with the cluster's password and TLS; its
    /// output, or `None` when it failed.
    pub fn cli(&self, i: usize, args: &[&str]) -> Option<String> {
        cli(self.nodes[i].port, &self.options, self.certs.as_ref(), args)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        kill(&mut self.nodes);
    }
}

/// One `redis-server` serving TLS only, with a certificate for 127.0.0.1 signed by a fresh
/// CA, killed on drop.
pub struct TlsRedis {
    node: Node,
    options: RedisOptions,
    certs: Certs,
    _dir: TempDir,
}

impl TlsRedis {
    /// Starts one with `password` (if any); `None` (after saying why) when it cannot, e.g. a
    /// `redis-server` built without TLS.
    pub fn start(password: Option<&str>) -> Option<TlsRedis> {
        for tool in ["redis-server", "redis-cli"] {
            if !installed(tool) {
                println!("skipping: {tool} is not installed");
                return None;
            }
        }
        let options = RedisOptions {
            password: password.map(str::to_owned),
            tls: true,
        };
        let dir = TempDir::new("redis-tls").expect("a temporary directory");
        let certs = make_certs(&dir.0);
        let port = free_ports(1)[0];
        let node = match spawn(&dir.0, port, &options, Some(&certs), &[]) {
            Ok(node) => node,
            Err(e) => {
                println!("skipping: redis-server did not start: {e}");
                return None;
            }
        };
        let mut redis = TlsRedis {
            node,
            options,
            certs,
            _dir: dir,
        };
        let (options, certs) = (&redis.options, &redis.certs);
        if !wait_until(
            std::slice::from_mut(&mut redis.node),
            Duration::from_secs(10),
            |port| cli(port, options, Some(certs), &["PING"]).is_some_and(|s| s.trim() == "PONG"),
        ) {
            println!(
                "skipping: redis-server with TLS did not start (built without TLS?):{}",
                log_tails(&redis._dir.0, std::slice::from_ref(&redis.node))
            );
            return None;
        }
        Some(redis)
    }

    /// `rediss://[:password@]127.0.0.1:port`.
    pub fn url(&self) -> String {
        url("rediss", &self.options, self.node.port)
    }

    /// The CA (PEM) that signed the server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.node.child.id()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        kill(std::slice::from_mut(&mut self.node));
    }
}
