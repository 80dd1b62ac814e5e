//! A connection's byte transport: a TCP or TLS stream, or a WebSocket carrying MQTT
//! in binary messages. Split into a reader and a writer, so that one task can wait for
//! both at once: a client that stops reading does not stop the reading of what it
//! sends.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
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
        AsyncWriteExt::write_all(self, data).await?;
        self.flush().await
    }

    /// Closes the write side.
    pub async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }

    /// Writes what the transport takes of `data` now, without waiting: `None` when it
    /// takes nothing yet (the caller waits with [`AsyncWriteExt::write`]).
    pub fn try_write(&mut self, data: &[u8]) -> Option<std::io::Result<usize>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self).poll_write(&mut cx, data) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Whether written bytes may wait in the transport until a flush: TLS records and
    /// WebSocket messages do, a plain TCP socket does not.
    pub fn buffers(&self) -> bool {
        !matches!(self, Writer::Tcp(_))
    }
}

/// A writer is a byte sink whatever it carries: a write to a WebSocket sends the
/// bytes as one binary message (MQTT packets need not align with messages).
/// `poll_write` is cancel-safe for each transport: bytes are either taken whole or
/// not at all, so a connection's loop can wait for a write beside a read.
impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_write(cx, data),
            Writer::Stream(w) => Pin::new(w).poll_write(cx, data),
            Writer::WebSocket(w) => {
                ready!(w.poll_ready_unpin(cx)).map_err(std::io::Error::other)?;
                w.start_send_unpin(WsMessage::Binary(Bytes::copy_from_slice(data)))
                    .map_err(std::io::Error::other)?;
                Poll::Ready(Ok(data.len()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_flush(cx),
            Writer::Stream(w) => Pin::new(w).poll_flush(cx),
            Writer::WebSocket(w) => w.poll_flush_unpin(cx).map_err(std::io::Error::other),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Writer::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            Writer::Stream(w) => Pin::new(w).poll_shutdown(cx),
            Writer::WebSocket(w) => w.poll_close_unpin(cx).map_err(std::io::Error::other),
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
