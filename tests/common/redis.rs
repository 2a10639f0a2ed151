//! A real `redis-server` (Debian's package) of the test's own, on a free loopback port, with
//! no persistence: it can be paused (SIGSTOP), resumed, and restarted empty on the same port.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// For `restart_empty`: the options it started with beyond port and directory.
    options: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        // redis-server has no "port 0"; a port another test takes first fails the start,
        // and then another port is tried.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let port = super::free_port();
            let child = spawn(port, dir.path(), &[]);
            let mut server = RedisServer {
                child,
                port,
                dir,
                options: Vec::new(),
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not start");
    }

    /// A server that speaks TLS only (the certificate from `pki`, for `localhost`) and wants
    /// `password`. Ready once it accepts connections (the plain-text checks cannot reach it).
    pub fn start_tls(pki: &super::TestPki, password: &str) -> RedisServer {
        let options: Vec<String> = [
            "--port",
            "0",
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ]
        .iter()
        .map(|o| o.to_string())
        .chain([
            "--tls-cert-file".to_owned(),
            pki.cert_path().display().to_string(),
            "--tls-key-file".to_owned(),
            pki.key_path().display().to_string(),
        ])
        .collect();
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let child = spawn(port, dir.path(), &options);
        let mut server = RedisServer {
            child,
            port,
            dir,
            options,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                server.child.try_wait().unwrap().is_none(),
                "redis-server with TLS exited"
            );
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it answers PING within a few seconds.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // Ours, not another test's server that had the port first.
            if let Some(pid) = self.server_pid() {
                return pid == self.child.id();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn server_pid(&self) -> Option<u32> {
        let info = self.bulk("INFO server")?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    }

    /// Sends one inline command on a new connection.
    fn send(&self, line: &str) -> Option<TcpStream> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut socket = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
        socket
            .set_read_timeout(Some(Duration::from_millis(1000)))
            .ok()?;
        socket.write_all(format!("{line}\r\n").as_bytes()).ok()?;
        Some(socket)
    }

    /// A command whose answer is a bulk string.
    pub fn bulk(&self, line: &str) -> Option<String> {
        let mut socket = self.send(line)?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n") {
                let length: usize = head.strip_prefix('$')?.parse().ok()?;
                if body.len() >= length {
                    return Some(body[..length].to_owned());
                }
            }
        }
    }

    /// One inline command; the first line of the answer.
    pub fn command(&self, line: &str) -> Option<String> {
        let mut socket = self.send(line)?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        while socket.read(&mut byte).ok()? == 1 {
            answer.push(byte[0]);
            if answer.ends_with(b"\r\n") {
                break;
            }
        }
        Some(String::from_utf8_lossy(&answer).trim_end().to_owned())
    }

    /// An integer answer (`:n`).
    pub fn integer(&self, line: &str) -> i64 {
        let answer = self.command(line).expect("redis answers");
        answer
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}: {answer}"))
    }

    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Kills it and starts a new, empty one on the same port.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = spawn(self.port, self.dir.path(), &self.options);
            if self.wait_ready() {
                return;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn spawn(port: u16, dir: &std::path::Path, options: &[String]) -> Child {
    // With TLS, `--port 0` in the options closes the plain port and `--tls-port` opens this one.
    let port_option = if options.iter().any(|o| o == "--tls-cert-file") {
        "--tls-port"
    } else {
        "--port"
    };
    Command::new("redis-server")
        .args([port_option, &port.to_string()])
        .args(options)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (Debian's redis-server package) is installed")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
