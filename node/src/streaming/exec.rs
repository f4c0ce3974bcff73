//! `exec` over a WebSocket: the Kubernetes channel protocols `v5.channel.k8s.io` and
//! `v4.channel.k8s.io`.
//!
//! Every binary message starts with its channel: 0 standard input (client to server),
//! 1 standard output, 2 standard error, 3 the error channel (one `Status` in JSON when the
//! command ends: `Success`, or `Failure` with reason `NonZeroExitCode` and the exit code
//! as the message of a cause with reason `ExitCode`), 4 terminal resize
//! (`{"Width":w,"Height":h}`). v5 adds channel 255, a close signal: `[255, 0]` from the
//! client ends standard input. When the command has ended and its output is sent, the
//! server sends the error channel's `Status` and closes the WebSocket normally (1000).

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::RuntimeError;
use crate::runtime::{ExecReader, ExecSession, LogStream};

/// The subprotocols served, most preferred first.
pub(crate) const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What the client asked to see.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wanted {
    pub stdout: bool,
    pub stderr: bool,
    /// The client speaks v5 (close signals).
    pub v5: bool,
}

/// The error channel's `Status` for a command that ended with `code`.
pub(crate) fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The error channel's `Status` for a command that could not run.
pub(crate) fn failure_status(e: &RuntimeError) -> Value {
    let (reason, code, message) = match e {
        RuntimeError::Unsupported(m) | RuntimeError::InvalidConfig(m) => {
            ("BadRequest", 400, m.clone())
        }
        other => (
            "InternalError",
            500,
            format!("Internal error occurred: error executing command in container: {other}"),
        ),
    };
    json!({
        "metadata": {}, "status": "Failure", "message": message, "reason": reason,
        "code": code,
    })
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(1 + data.len());
    m.push(channel);
    m.extend_from_slice(data);
    Message::Binary(Bytes::from(m))
}

/// Copies one output of the command to its channel (or drops it when the client did
/// not ask for it).
async fn pump(mut from: ExecReader, channel: Option<u8>, to: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(c) = channel {
                    if to.send(frame(c, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// How long a terminal session waits for the client's first size before it starts the
/// command anyway (kubectl sends its size as soon as it is connected).
const FIRST_SIZE: std::time::Duration = std::time::Duration::from_secs(2);

/// The width and height of a resize message.
fn size_of(message: &[u8]) -> Option<(u16, u16)> {
    let size: Value = serde_json::from_slice(message).ok()?;
    let dim = |k: &str| {
        size.get(k)
            .and_then(Value::as_u64)
            .and_then(|v| u16::try_from(v).ok())
    };
    Some((dim("Width")?, dim("Height")?))
}

/// Runs one exec session on an upgraded WebSocket: `start` starts the command. With a
/// terminal (`tty`), the command starts once the client has sent its size (or after
/// [`FIRST_SIZE`]), so that it starts with the right one.
pub(crate) async fn serve<F>(
    socket: WebSocket,
    wanted: Wanted,
    command: Vec<String>,
    tty: bool,
    start: F,
) where
    F: std::future::Future<Output = Result<ExecSession, RuntimeError>>,
{
    let (mut sink, mut incoming) = socket.split();
    // Messages read while waiting for the size, handled once the command runs.
    let mut early: Vec<Bytes> = Vec::new();
    let mut first_size = None;
    if tty {
        let deadline = tokio::time::sleep(FIRST_SIZE);
        tokio::pin!(deadline);
        while first_size.is_none() {
            tokio::select! {
                () = &mut deadline => break,
                message = incoming.next() => match message {
                    Some(Ok(Message::Binary(d))) => match d.split_first() {
                        Some((&RESIZE, rest)) => first_size = size_of(rest),
                        _ => early.push(d),
                    },
                    Some(Ok(Message::Close(_) | Message::Text(_))) | Some(Err(_)) | None => {
                        return;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    let session = match start.await {
        Ok(s) => s,
        Err(e) => {
            let status = failure_status(&e);
            let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
            let _ = sink.send(normal_close()).await;
            return;
        }
    };
    let ExecSession {
        stdin,
        stdout,
        stderr,
        exit,
        resize,
    } = session;
    if let (Some(resize), Some((w, h))) = (&resize, first_size) {
        resize(w, h);
    }

    // Input: standard input, resizes, the close signal; pings are answered by the
    // WebSocket layer as long as somebody reads. It ends when the client goes away.
    let mut input = tokio::spawn(async move {
        let mut stdin = stdin;
        let early = futures::stream::iter(early.into_iter().map(|d| Ok(Message::Binary(d))));
        let mut messages = early.chain(incoming);
        while let Some(Ok(message)) = messages.next().await {
            let data = match message {
                Message::Binary(d) => d,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(rest).await.is_err() || w.flush().await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    if let (Some(resize), Some((w, h))) = (&resize, size_of(rest)) {
                        resize(w, h);
                    }
                }
                CLOSE if wanted.v5 && rest.first() == Some(&STDIN) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    });

    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let mut pumps = vec![tokio::spawn(pump(
        stdout,
        wanted.stdout.then_some(STDOUT),
        tx.clone(),
    ))];
    if let Some(stderr) = stderr {
        pumps.push(tokio::spawn(pump(
            stderr,
            wanted.stderr.then_some(STDERR),
            tx.clone(),
        )));
    }
    drop(tx);
    let finish = async {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let status = match exit.await {
            Ok(code) => exit_status(&command, code),
            Err(e) => failure_status(&e),
        };
        let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
        let _ = sink.send(normal_close()).await;
    };
    // A client that goes away before the end ends the command: dropping `finish` drops
    // the session.
    tokio::select! {
        () = finish => {}
        _ = &mut input => {}
    }
    input.abort();
    for p in pumps {
        p.abort();
    }
}

/// Runs one attach session: the container's output, as `output` yields it, on the stdout
/// channel; a `Success` status when it ends (the container ended).
pub(crate) async fn serve_attach(socket: WebSocket, output: Result<LogStream, RuntimeError>) {
    let (mut sink, mut incoming) = socket.split();
    let mut output = match output {
        Ok(o) => o,
        Err(e) => {
            let status = failure_status(&e);
            let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
            let _ = sink.send(normal_close()).await;
            return;
        }
    };
    let mut input = tokio::spawn(async move {
        while let Some(Ok(message)) = incoming.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    });
    let finish = async {
        while let Some(chunk) = output.next().await {
            let Ok(bytes) = chunk else { break };
            if sink.send(frame(STDOUT, &bytes)).await.is_err() {
                return;
            }
        }
        let status = json!({"metadata": {}, "status": "Success"});
        let _ = sink.send(frame(ERROR, status.to_string().as_bytes())).await;
        let _ = sink.send(normal_close()).await;
    };
    tokio::select! {
        () = finish => {}
        _ = &mut input => {}
    }
    input.abort();
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000,
        reason: "".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_zero_exit_is_a_failure_with_the_code_as_a_cause() {
        let command = vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        let s = exit_status(&command, 3);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&command, 0)["status"], "Success");
    }

    #[test]
    fn a_command_that_cannot_start_is_an_internal_error() {
        let s = failure_status(&RuntimeError::CommandNotFound("no such program".into()));
        assert_eq!(s["code"], 500);
        assert!(s["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("no such program")));
        let s = failure_status(&RuntimeError::Unsupported("no terminal".into()));
        assert_eq!(s["code"], 400);
    }
}
