//! The agent's streaming endpoints, as kubelet's streaming server: `exec` over a
//! WebSocket (the Kubernetes channel protocols) and `portforward` over SPDY/3.1, either
//! upgraded directly (`Upgrade: SPDY/3.1`) or tunnelled in WebSocket binary messages
//! (subprotocol `SPDY/3.1+portforward.k8s.io`, what kubectl 1.31+ tries first).

pub(crate) mod exec;
pub(crate) mod spdy;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The WebSocket subprotocol of SPDY tunnelled in WebSocket messages.
pub(crate) const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol of port-forward over SPDY.
pub(crate) const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// A byte stream carried by a WebSocket's binary messages (each message a chunk, no
/// framing of its own): what the client writes comes out of the returned stream, what is
/// written into it goes to the client.
pub(crate) fn tunnel(socket: WebSocket) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut incoming) = socket.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let inbound = async move {
            while let Some(Ok(message)) = incoming.next().await {
                match message {
                    Message::Binary(data) if wr.write_all(&data).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = wr.shutdown().await;
        };
        let outbound = async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let m = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "".into(),
                })))
                .await;
        };
        tokio::join!(inbound, outbound);
    });
    ours
}
