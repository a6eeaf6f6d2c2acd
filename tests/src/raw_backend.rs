//! A raw upstream for desync tests: it parses requests itself with the
//! strict parser in [`crate::strict_http`], logs every request it parses
//! (per connection, in order, with its exact header lines, framing and
//! body), and answers each with a small response carrying the request's
//! sequence number in `X-Backend-Seq`, so a test can pair the responses a
//! client got with the requests the backend saw.
//!
//! Bytes it cannot parse are logged as [`Event::Malformed`] and the
//! connection is closed; a connection that ends inside a request is logged
//! as [`Event::Aborted`]. Nothing is skipped or repaired.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use anyhow::Result;

use crate::strict_http::{Parse, ParseError, ParsedRequest, parse_request};

/// What a backend saw, in the order it saw it (across its connections).
#[derive(Clone, Debug)]
pub enum Event {
    Request {
        /// The backend's name.
        backend: String,
        /// The backend's connection number (from 0, in accept order).
        conn: u64,
        /// Sequence number over the shared log; sent in `X-Backend-Seq`.
        seq: u64,
        request: ParsedRequest,
    },
    /// Bytes the strict parser refused; the connection was closed.
    Malformed {
        backend: String,
        conn: u64,
        error: ParseError,
        bytes: Vec<u8>,
    },
    /// The connection ended in the middle of a request.
    Aborted {
        backend: String,
        conn: u64,
        /// The request line, if it arrived.
        request_line: String,
        bytes: Vec<u8>,
    },
}

/// A log shared by several backends, so their events keep one order.
#[derive(Clone, Default)]
pub struct RawLog(Arc<Mutex<Vec<Event>>>);

impl RawLog {
    pub fn len(&self) -> usize {
        self.0.lock().expect("raw log lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event at `index` (an `X-Backend-Seq` value).
    pub fn get(&self, index: u64) -> Option<Event> {
        let events = self.0.lock().expect("raw log lock");
        usize::try_from(index)
            .ok()
            .and_then(|i| events.get(i).cloned())
    }

    /// Events from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Event> {
        self.0.lock().expect("raw log lock")[from..].to_vec()
    }

    fn push(&self, make: impl FnOnce(u64) -> Event) -> u64 {
        let mut events = self.0.lock().expect("raw log lock");
        let seq = events.len() as u64;
        events.push(make(seq));
        seq
    }
}

pub struct RawBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl RawBackend {
    /// Listens on a free loopback port and logs into `log`.
    pub fn start(name: &str, log: &RawLog) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, open, log, name) =
                (stop.clone(), open.clone(), log.clone(), name.to_owned());
            thread::Builder::new()
                .name(format!("raw-backend-{name}"))
                .spawn(move || {
                    let mut conn = 0;
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(stream) = stream else { continue };
                        if let Ok(clone) = stream.try_clone() {
                            open.lock().expect("open list lock").push(clone);
                        }
                        let (log, name) = (log.clone(), name.clone());
                        let id = conn;
                        conn += 1;
                        let _ = thread::Builder::new()
                            .name(format!("raw-{name}-{id}"))
                            .spawn(move || serve(stream, &name, id, &log));
                    }
                })?
        };
        Ok(Self {
            addr,
            stop,
            open,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        for stream in self.open.lock().expect("open list lock").iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Reads, parses and answers requests until the peer closes or sends
/// something the strict parser refuses.
fn serve(mut stream: TcpStream, name: &str, conn: u64, log: &RawLog) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Answer every complete request already buffered.
        loop {
            match parse_request(&buf) {
                Ok(Parse::Complete(request, used)) => {
                    buf.drain(..used);
                    let head = request.method == "HEAD";
                    let seq = log.push(|seq| Event::Request {
                        backend: name.to_owned(),
                        conn,
                        seq,
                        request,
                    });
                    if stream.write_all(&response(seq, head)).is_err() {
                        return;
                    }
                }
                Ok(Parse::Partial) => break,
                Err(error) => {
                    log.push(|_| Event::Malformed {
                        backend: name.to_owned(),
                        conn,
                        error,
                        bytes: std::mem::take(&mut buf),
                    });
                    let _ = stream.write_all(
                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    let request_line = buf
                        .split(|&b| b == b'\r' || b == b'\n')
                        .next()
                        .map(|line| String::from_utf8_lossy(line).into_owned())
                        .unwrap_or_default();
                    log.push(|_| Event::Aborted {
                        backend: name.to_owned(),
                        conn,
                        request_line,
                        bytes: buf,
                    });
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The answer to request `seq`; a HEAD answer announces the body it omits.
fn response(seq: u64, head: bool) -> Vec<u8> {
    let body = format!("backend seq {seq}\n");
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend-seq: {seq}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
