//! A client connection's socket as hyper serves it, plus what hyper does not
//! offer for a header timeout: whether the client has started a request
//! (bytes arrived since elb last wrote), and the socket back once hyper
//! has let go of it, so that elb can still answer 408.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::oneshot,
};

/// The socket, handed back when hyper drops its [`ClientIo`].
#[derive(Debug)]
pub struct Reclaimed {
    pub stream: TcpStream,
    /// Bytes arrived after elb's last write: the client has begun a request
    /// that has not been answered (its head, when the header timer fired).
    pub request_started: bool,
}

/// Wraps the client's socket; when dropped (hyper is done with it, or an
/// upgraded tunnel ended) it hands the socket to its [`oneshot::Receiver`]
/// if that still waits, and otherwise closes it.
#[derive(Debug)]
pub struct ClientIo {
    /// Always `Some` until dropped.
    stream: Option<TcpStream>,
    read_since_write: bool,
    reclaim: Option<oneshot::Sender<Reclaimed>>,
}

impl ClientIo {
    pub fn new(stream: TcpStream) -> (Self, oneshot::Receiver<Reclaimed>) {
        let (tx, rx) = oneshot::channel();
        let io = Self {
            stream: Some(stream),
            read_since_write: false,
            reclaim: Some(tx),
        };
        (io, rx)
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
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

impl Drop for ClientIo {
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

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(this.stream()?.poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.read_since_write = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientIo {
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
pub async fn answer_header_timeout(mut stream: TcpStream) {
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
