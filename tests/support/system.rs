//! Real servers from the system's packages (Debian's `prometheus`, `nats-server`) for the tests
//! that meet them, shared by this crate's tests and the example's (by path). A test finds its
//! server or says it skipped and why; where CI requires the server (an environment variable
//! that `.ci/run` sets), its absence fails the test instead.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `program` runs here. When it does not, the caller should return: this says the test
/// skipped, or panics when `require_env` is set.
pub fn installed(program: &str, package: &str, require_env: &str) -> bool {
    match Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => true,
        Err(error) => {
            assert!(
                std::env::var_os(require_env).is_none(),
                "{require_env} is set but {program} cannot run ({error}): apt-get install {package}"
            );
            eprintln!("skipped: {program} not found (apt-get install {package}; {require_env}=1 makes this a failure)");
            false
        }
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `nats-server` of its own on a free loopback port.
pub struct NatsServer {
    _process: KillOnDrop,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl NatsServer {
    /// Starts one with the server's defaults; `None` (after saying so) where `nats-server` is
    /// not installed and `TOKENTRACE_REQUIRE_NATS` is not set.
    pub fn start() -> Option<Self> {
        Self::start_with("")
    }

    /// Starts one with extra configuration lines (`max_payload: 4096`, ...).
    pub fn start_with(config: &str) -> Option<Self> {
        if !installed("nats-server", "nats-server", "TOKENTRACE_REQUIRE_NATS") {
            return None;
        }
        let port = free_port();
        let file = std::env::temp_dir().join(format!("tokentrace-nats-{}-{port}.conf", std::process::id()));
        std::fs::write(&file, format!("listen: 127.0.0.1:{port}\n{config}\n")).unwrap();
        let mut child = Command::new("nats-server")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        // It logs "Server is ready" on stderr once it accepts clients.
        let stderr = child.stderr.take().unwrap();
        let process = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = BufReader::new(stderr).lines();
        loop {
            assert!(Instant::now() < deadline, "nats-server did not get ready on port {port}");
            match lines.next() {
                Some(Ok(line)) if line.contains("Server is ready") => break,
                Some(Ok(_)) => {}
                _ => panic!("nats-server exited before it was ready (port {port})"),
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let _ = std::fs::remove_file(&file);
        Some(Self { _process: process, url: format!("nats://127.0.0.1:{port}") })
    }
}
