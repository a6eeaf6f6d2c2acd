//! Answering a client over `--max-connections`: accepted, answered 503 and
//! closed, rather than left in the kernel's backlog. HAProxy's `maxconn`
//! leaves them queued (they time out with no answer once the backlog
//! fills) and nginx closes them unanswered ("worker_connections are not
//! enough"); a 503 tells the client and its load balancer that elb is
//! busy, at the cost of one descriptor for a moment, from the reserve.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::limits::RefusalPermit;

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 47\r\n\
retry-after: 1\r\n\
connection: close\r\n\r\n\
elb has too many open connections, retry soon\r\n";

/// Longest a refused connection stays open.
const LINGER: Duration = Duration::from_secs(1);
/// Most request bytes read (and dropped) before closing.
const DRAIN: usize = 16 << 10;

/// Writes the 503, then reads what the client sent for a moment before
/// closing: closing with unread bytes would send a reset, which can reach
/// the client before it has read the 503.
pub async fn answer_busy(mut stream: TcpStream, _permit: RefusalPermit) {
    let _ = tokio::time::timeout(LINGER, async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < DRAIN {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_a_well_formed_503() {
        let text = std::str::from_utf8(BUSY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
