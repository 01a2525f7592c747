//! A `dallinger-oci debug` process under test: its output read line by
//! line, waited on for a line, stopped with SIGINT as a terminal's Ctrl-C.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct DebugSession {
    child: Child,
    received: mpsc::Receiver<String>,
    /// Every line read so far, stdout and stderr interleaved.
    pub transcript: String,
}

impl DebugSession {
    /// Spawns `cmd` with both streams piped.
    pub fn spawn(cmd: &mut Command) -> DebugSession {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (lines, received) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        DebugSession {
            child,
            received,
            transcript: String::new(),
        }
    }

    fn take(&mut self, line: String) -> bool {
        eprintln!("debug> {line}");
        self.transcript.push_str(&line);
        self.transcript.push('\n');
        true
    }

    /// Reads lines until one contains `needle`; returns it. Panics with the
    /// transcript when `limit` passes or the process's output ends first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.received.recv_timeout(Duration::from_millis(500)) {
                Ok(line) => {
                    self.take(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no {needle:?} within {limit:?}:\n{}", self.transcript);
    }

    /// SIGINT, as Ctrl-C in a terminal sends it; then the exit status
    /// (panics when it takes longer than `limit`).
    pub fn interrupt(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.received.recv_timeout(Duration::from_millis(200)) {
                    self.take(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "debug did not exit after SIGINT");
            while let Ok(line) = self.received.try_recv() {
                self.take(line);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Kills the process if the test fails before it exits.
impl Drop for DebugSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
