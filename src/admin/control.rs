//! The control socket `state_dir/control.sock` (mode 0600): how `smtprelay queue flush | retry
//! | hold | release | delete` reach the running daemon, so they never race its workers. One
//! JSON request line, one JSON answer line.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Control, ControlRequest};

pub const SOCKET: &str = "control.sock";

#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    pub message: String,
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Serves the socket until `shutdown`, then removes it.
pub async fn serve(
    path: PathBuf,
    control: mpsc::UnboundedSender<ControlRequest>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // A socket left by a killed daemon: the spool lock says no other daemon runs.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = shutdown.cancelled() => break,
        };
        let control = control.clone();
        tokio::spawn(async move {
            let _ = answer(stream, control).await;
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn answer(
    stream: UnixStream,
    control: mpsc::UnboundedSender<ControlRequest>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).take_line(&mut line).await?;
    let answer = match serde_json::from_str::<Control>(&line) {
        Err(e) => Answer {
            ok: false,
            message: format!("bad request: {e}"),
        },
        Ok(command) => {
            let (reply, result) = tokio::sync::oneshot::channel();
            if control.send((command, reply)).is_err() {
                Answer {
                    ok: false,
                    message: "delivery is stopping".into(),
                }
            } else {
                match result.await {
                    Ok(Ok(message)) => Answer { ok: true, message },
                    Ok(Err(message)) => Answer { ok: false, message },
                    Err(_) => Answer {
                        ok: false,
                        message: "delivery is stopping".into(),
                    },
                }
            }
        }
    };
    let mut text = serde_json::to_string(&answer).expect("serialises");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

trait TakeLine {
    async fn take_line(&mut self, line: &mut String) -> std::io::Result<usize>;
}

impl<R: tokio::io::AsyncRead + Unpin> TakeLine for BufReader<R> {
    /// One request line, at most 4 KiB.
    async fn take_line(&mut self, line: &mut String) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut limited = (&mut *self).take(4096);
        limited.read_line(line).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "smtprelay is not running, or it runs without delivery (no [[account]] or no token key): no control socket at {0}"
    )]
    NotRunning(PathBuf),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// Sends one command to the daemon (for the CLI).
pub async fn request(state_dir: &Path, command: &Control) -> Result<String, ControlError> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|_| ControlError::NotRunning(path.clone()))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(command).expect("serialises");
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let answer: Answer = serde_json::from_str(&line)
        .map_err(|e| ControlError::Refused(format!("unexpected answer from the daemon: {e}")))?;
    if answer.ok {
        Ok(answer.message)
    } else {
        Err(ControlError::Refused(answer.message))
    }
}
