//! A connection's byte transport: a TCP or TLS stream, or a WebSocket carrying MQTT
//! in binary messages. Split into a reader and a writer so that a client that stops
//! reading never blocks the handling of what it sends.

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// Any byte stream a listener accepts (TCP or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed byte stream.
pub type BoxIo = Box<dyn Io>;

/// An accepted connection, ready for MQTT.
pub enum Transport {
    /// MQTT directly on plain TCP: split into halves that need no lock.
    Tcp(TcpStream),
    /// MQTT directly on the stream (TLS).
    Stream(BoxIo),
    /// MQTT in WebSocket binary messages.
    WebSocket(Box<WebSocketStream<BoxIo>>),
}

/// Read side of a [`Transport`].
pub enum Reader {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// Stream.
    Stream(ReadHalf<BoxIo>),
    /// WebSocket.
    WebSocket(SplitStream<WebSocketStream<BoxIo>>),
}

/// Write side of a [`Transport`].
pub enum Writer {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// Stream.
    Stream(WriteHalf<BoxIo>),
    /// WebSocket.
    WebSocket(SplitSink<WebSocketStream<BoxIo>, WsMessage>),
}

impl Transport {
    /// Splits into reader and writer.
    pub fn split(self) -> (Reader, Writer) {
        match self {
            Transport::Tcp(s) => {
                let (r, w) = s.into_split();
                (Reader::Tcp(r), Writer::Tcp(w))
            }
            // A lock shared by the two halves, taken on every read and write.
            Transport::Stream(s) => {
                let (r, w) = tokio::io::split(s);
                (Reader::Stream(r), Writer::Stream(w))
            }
            Transport::WebSocket(ws) => {
                let (w, r) = (*ws).split();
                (Reader::WebSocket(r), Writer::WebSocket(w))
            }
        }
    }
}

impl Reader {
    /// Appends what arrives to `buf`. Returns 0 at end of stream.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            Reader::Tcp(r) => read_stream(r, buf).await,
            Reader::Stream(r) => read_stream(r, buf).await,
            Reader::WebSocket(r) => loop {
                match r.next().await {
                    None => return Ok(0),
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                    Some(Ok(WsMessage::Binary(data))) => {
                        if data.is_empty() {
                            continue;
                        }
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Some(Ok(WsMessage::Close(_))) => return Ok(0),
                    Some(Ok(WsMessage::Text(_))) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "MQTT over WebSocket must use binary messages",
                        ))
                    }
                    Some(Ok(_)) => continue,
                }
            },
        }
    }
}

impl Writer {
    /// Writes all of `data` and flushes.
    pub async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Tcp(w) => write_stream(w, data).await,
            Writer::Stream(w) => write_stream(w, data).await,
            Writer::WebSocket(w) => w
                .send(WsMessage::Binary(data.to_vec().into()))
                .await
                .map_err(std::io::Error::other),
        }
    }

    /// Closes the write side.
    pub async fn shutdown(&mut self) {
        match self {
            Writer::Tcp(w) => {
                let _ = w.shutdown().await;
            }
            Writer::Stream(w) => {
                let _ = w.shutdown().await;
            }
            Writer::WebSocket(w) => {
                let _ = w.close().await;
            }
        }
    }
}

/// Appends what arrives on a byte stream to `buf`. Small reads for idle and light
/// clients; once a read fills the buffer, larger chunks (the allocation is then
/// reused).
async fn read_stream<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    let want = if buf.capacity() >= 8192 { 8192 } else { 1024 };
    buf.reserve(want);
    let spare = buf.capacity() - buf.len();
    let n = r.read_buf(buf).await?;
    if n == spare && buf.capacity() < 8192 {
        buf.reserve(8192);
    }
    Ok(n)
}

/// Writes all of `data` to a byte stream and flushes.
async fn write_stream<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    w.write_all(data).await?;
    w.flush().await
}
