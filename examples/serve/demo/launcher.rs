//! Starts components as child processes of this same binary, waits for each to report its
//! address, and shuts them down gracefully (closing their stdin) so their telemetry flushes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The last lines a quiet component wrote to stderr, read on a thread until it exits.
struct StderrTail(std::thread::JoinHandle<VecDeque<String>>);

impl StderrTail {
    const LINES: usize = 20;

    fn read(stderr: ChildStderr) -> Self {
        Self(std::thread::spawn(move || {
            let mut tail = VecDeque::with_capacity(Self::LINES);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tail.len() == Self::LINES {
                    tail.pop_front();
                }
                tail.push_back(line.chars().take(500).collect());
            }
            tail
        }))
    }

    /// After the component exited: its last stderr lines, as the end of an error message.
    fn finish(self) -> String {
        match self.0.join() {
            Ok(tail) if !tail.is_empty() => format!(":\n  {}", Vec::from(tail).join("\n  ")),
            _ => String::new(),
        }
    }
}

/// A running component.
pub struct Component {
    pub name: &'static str,
    pub addr: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Component {
    /// Spawns this program as `serve <args>` with `env`, and waits (up to 60 s) for its
    /// `READY <addr>` line.
    pub fn spawn(
        name: &'static str,
        args: &[String],
        env: &[(String, String)],
        quiet: bool,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        Self::spawn_program(&exe, name, args, env, quiet)
    }

    /// Like [`Component::spawn`], for the `serve` binary at `exe` (the tests start it so).
    pub fn spawn_program(
        exe: &std::path::Path,
        name: &'static str,
        args: &[String],
        env: &[(String, String)],
        quiet: bool,
    ) -> Result<Self, String> {
        let mut command = Command::new(exe);
        command.args(args).arg("--exit-on-stdin-close");
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        // Quiet components' stderr is kept (its last lines) to explain an early exit.
        command.stderr(if quiet { Stdio::piped() } else { Stdio::inherit() });
        let mut child = command.spawn().map_err(|e| format!("cannot start {name}: {e}"))?;
        let stderr_tail = child.stderr.take().map(StderrTail::read);
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take();
        let (ready, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reported = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("READY ") {
                    let _ = ready.send(addr.trim().to_owned());
                    reported = true;
                } else if reported {
                    println!("{line}");
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = wait.recv_timeout(Duration::from_millis(100)) {
                return Ok(Self { name, addr, child, stdin });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let why = stderr_tail.map(StderrTail::finish).unwrap_or_default();
                return Err(format!("{name} exited before it was ready ({status}){why}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("{name} did not become ready within 60 s"));
            }
        }
    }

    /// Asks the component to stop and waits (up to 10 s) for it to flush and exit.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// Kills the component at once (SIGKILL): nothing is flushed, as when a process crashes.
    #[allow(dead_code)] // the tests kill workers mid-stream
    pub fn kill(mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop_inner(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop in time; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.stop_inner();
        }
    }
}
