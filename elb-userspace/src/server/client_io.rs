//! A client connection's socket as hyper serves it, plus what hyper does not
//! offer for a header timeout: whether the client has started a request
//! (bytes arrived since elb last wrote), and the socket back once hyper
//! has let go of it, so that elb can still answer 408. Generic over the
//! stream: a TCP socket, or a TLS session over one.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::oneshot,
};

/// The socket, handed back when hyper drops its [`ClientIo`].
#[derive(Debug)]
pub struct Reclaimed<S = TcpStream> {
    pub stream: S,
    /// Bytes arrived after elb's last write: the client has begun a request
    /// that has not been answered (its head, when the header timer fired).
    pub request_started: bool,
}

/// Wraps the client's socket; when dropped (hyper is done with it, or an
/// upgraded tunnel ended) it hands the socket to its [`oneshot::Receiver`]
/// if that still waits, and otherwise closes it.
#[derive(Debug)]
pub struct ClientIo<S = TcpStream> {
    /// Always `Some` until dropped.
    stream: Option<S>,
    /// Bytes already read from the stream (to tell HTTP/2's preface from
    /// an HTTP/1 request), read again first.
    replay: Bytes,
    read_since_write: bool,
    reclaim: Option<oneshot::Sender<Reclaimed<S>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientIo<S> {
    #[cfg(test)]
    pub fn new(stream: S) -> (Self, oneshot::Receiver<Reclaimed<S>>) {
        Self::with_replay(stream, Bytes::new())
    }

    /// [`ClientIo::new`] for a stream whose first bytes, `replay`, were
    /// already read.
    pub fn with_replay(stream: S, replay: Bytes) -> (Self, oneshot::Receiver<Reclaimed<S>>) {
        let (tx, rx) = oneshot::channel();
        let io = Self {
            stream: Some(stream),
            read_since_write: !replay.is_empty(),
            replay,
            reclaim: Some(tx),
        };
        (io, rx)
    }

    fn stream(&mut self) -> io::Result<Pin<&mut S>> {
        self.stream
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn wrote(&mut self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.read_since_write = false;
        }
    }
}

impl<S> Drop for ClientIo<S> {
    fn drop(&mut self) {
        if let (Some(stream), Some(reclaim)) = (self.stream.take(), self.reclaim.take()) {
            // Nobody waiting: the socket drops with the refused value.
            let _ = reclaim.send(Reclaimed {
                stream,
                request_started: self.read_since_write,
            });
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.stream()?.poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.read_since_write = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = this.stream()?.poll_write(cx, buf);
        this.wrote(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = this.stream()?.poll_write_vectored(cx, bufs);
        this.wrote(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_shutdown(cx)
    }
}

/// What a client gets when its request head is not in within
/// `--header-timeout`.
const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
    content-type: text/plain; charset=utf-8\r\n\
    content-length: 44\r\n\
    connection: close\r\n\r\n\
    408 the request head did not arrive in time\n";

/// How long the 408 may take to write, and how long elb then reads and
/// discards what the client still sends before closing.
const LINGER: Duration = Duration::from_secs(2);
/// The most a lingering client may send before elb closes anyway.
const LINGER_BYTES: usize = 64 << 10;

/// Sends the 408 and closes. The close lingers, as nginx's does: bytes the
/// client sends meanwhile are read and dropped, since closing with unread
/// bytes makes the kernel reset the connection, and a reset can discard
/// the 408 before the client reads it.
pub async fn answer_header_timeout<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let sent = tokio::time::timeout(LINGER, async {
        stream.write_all(REQUEST_TIMEOUT).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// HTTP/2's connection preface (RFC 9113 §3.4): how an h2c client with
/// prior knowledge begins.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plaintext connection speaks HTTP/2, and the bytes read to tell.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http2(Bytes),
    Http1(Bytes),
    /// Closed, or nothing but a partial preface, before `limit`.
    Nothing,
}

/// Reads until the bytes are the HTTP/2 preface or cannot begin it. An
/// HTTP/1 request can never start with "PRI", so a few bytes decide.
pub async fn sniff_preface<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> Sniffed {
    let mut read = Vec::with_capacity(H2_PREFACE.len());
    let sniffed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let wanted = H2_PREFACE.len() - read.len();
            match stream.read(&mut buf[..wanted]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => read.extend_from_slice(&buf[..n]),
            }
            if !H2_PREFACE.starts_with(&read) || read.len() == H2_PREFACE.len() {
                return true;
            }
        }
    })
    .await;
    match sniffed {
        Ok(true) if read == H2_PREFACE => Sniffed::Http2(Bytes::from(read)),
        Ok(true) => Sniffed::Http1(Bytes::from(read)),
        _ => Sniffed::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_408_announces_its_exact_length() {
        let text = std::str::from_utf8(REQUEST_TIMEOUT).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 408 "));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn bytes_read_since_the_last_write_are_a_started_request() {
        let (mut client, server) = pair().await;
        let (mut io, reclaimed) = ClientIo::new(server);
        client.write_all(b"GET / HTTP/1.1\r\n").await.expect("send");
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.expect("read") > 0);
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        client.write_all(b"GE").await.expect("send");
        assert!(io.read(&mut buf).await.expect("read") > 0);
        drop(io);
        let reclaimed = reclaimed.await.expect("socket handed back");
        assert!(reclaimed.request_started);
    }

    #[tokio::test]
    async fn the_preface_is_told_from_http1_and_read_again() {
        for (sent, http2) in [
            (&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"[..], true),
            (b"GET / HTTP/1.1\r\n\r\n", false),
            (b"PRI * HTTP/1.1\r\n\r\n", false),
            (b"P", false),
        ] {
            let (mut client, mut server) = pair().await;
            client.write_all(sent).await.expect("send");
            if sent.len() == 1 {
                client.shutdown().await.expect("half close");
            }
            let sniffed = sniff_preface(&mut server, Duration::from_secs(5)).await;
            let read = match (sniffed, http2) {
                (Sniffed::Http2(read), true) | (Sniffed::Http1(read), false) => read,
                (Sniffed::Nothing, false) if sent.len() == 1 => continue,
                (other, _) => panic!("{sent:?}: {other:?}"),
            };
            // Whatever was read comes first, then the rest.
            let (mut io, _reclaimed) = ClientIo::with_replay(server, read);
            let mut again = vec![0u8; sent.len()];
            io.read_exact(&mut again).await.expect("read again");
            assert_eq!(again, sent);
        }
    }

    #[tokio::test]
    async fn an_answered_connection_has_no_started_request() {
        let (mut client, server) = pair().await;
        let (mut io, reclaimed) = ClientIo::new(server);
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.expect("read") > 0);
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .expect("write");
        drop(io);
        let reclaimed = reclaimed.await.expect("socket handed back");
        assert!(!reclaimed.request_started);
    }
}
