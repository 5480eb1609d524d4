//! The caps on connections held at once (`serve --max-connections` in all and
//! `--max-connections-per-ip` from one address): an `axum-server` acceptor that gives each
//! accepted connection a permit and closes it at once when none is left, for all or for its
//! address. The permit travels with the connection's stream and comes back when the connection
//! closes, whoever closes it (the client, a timeout, the end of the answer).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A stream that knows its peer's address (the per-address cap's key).
pub trait PeerIp {
    /// The peer's address, an IPv4 peer of a dual-stack listener as IPv4.
    fn peer_ip(&self) -> Option<IpAddr>;
}

impl PeerIp for tokio::net::TcpStream {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_addr().ok().map(|a| a.ip().to_canonical())
    }
}

/// Connections open per address: an entry lives while its count is above 0.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// One more connection from `ip`, unless `max` are open from it.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressPlace> {
        // An IPv6 address by its /64: one host holds a whole /64.
        let ip = super::tally::address_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressPlace {
            ip,
            of: self.clone(),
        })
    }
}

/// A connection's place among those of its address, given back on drop.
struct AddressPlace {
    ip: IpAddr,
    of: Arc<PerAddress>,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.of.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts at most `max` connections at once, and `per_ip` from one address, wrapping another
/// acceptor.
#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    slots: Arc<Semaphore>,
    max: usize,
    per_ip: usize,
    addresses: Arc<PerAddress>,
    refused: Arc<AtomicU64>,
}

impl<A> Capped<A> {
    /// `max` connections at once through `inner`, at most `per_ip` of them from one address.
    pub fn new(inner: A, max: usize, per_ip: usize) -> Capped<A> {
        let max = max.max(1);
        Capped {
            inner,
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_ip: per_ip.clamp(1, max),
            addresses: Arc::default(),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Connections open from `ip` now.
    #[cfg(test)]
    fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.addresses.open.lock().unwrap();
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl<I, S, A> Accept<I, S> for Capped<A>
where
    A: Accept<Permitted<I>, S> + Clone + Send + 'static,
    A::Future: Send,
    I: PeerIp + Send + 'static,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future =
        Pin<Box<dyn std::future::Future<Output = io::Result<(A::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        // The address first: one address at its cap takes no place from the others.
        let place = match stream.peer_ip() {
            Some(ip) => self.addresses.enter(ip, self.per_ip).ok_or(Some(ip)),
            None => Err(None),
        };
        let permit = match &place {
            Ok(_) => self.slots.clone().try_acquire_owned().ok(),
            Err(_) => None,
        };
        let inner = self.inner.clone();
        let refused = self.refused.clone();
        let (max, per_ip) = (self.max, self.per_ip);
        Box::pin(async move {
            let (Ok(place), Some(permit)) = (place, permit) else {
                // Dropping the stream closes the connection; one log line per 1,000 closed.
                if refused.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                    tracing::warn!(
                        "serve: {max} connections open (--max-connections), or {per_ip} from \
                         one address (--max-connections-per-ip); closing new ones"
                    );
                }
                return Err(io::Error::other("connection limit reached"));
            };
            inner
                .accept(
                    Permitted {
                        inner: stream,
                        _permit: permit,
                        _place: place,
                    },
                    service,
                )
                .await
        })
    }
}

/// A connection's stream with its permit.
pub struct Permitted<I> {
    inner: I,
    _permit: OwnedSemaphorePermit,
    _place: AddressPlace,
}

impl<I: AsyncRead + Unpin> AsyncRead for Permitted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Permitted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream from a given address that is never read.
    struct From(IpAddr);

    impl PeerIp for From {
        fn peer_ip(&self) -> Option<IpAddr> {
            Some(self.0)
        }
    }

    /// Hands the stream back as it came.
    #[derive(Clone)]
    struct Through;

    impl<I: Send + 'static> Accept<I, ()> for Through {
        type Stream = I;
        type Service = ();
        type Future = std::future::Ready<io::Result<(I, ())>>;
        fn accept(&self, stream: I, _: ()) -> Self::Future {
            std::future::ready(Ok((stream, ())))
        }
    }

    fn accept(cap: &Capped<Through>, ip: &str) -> Option<Permitted<From>> {
        let stream = From(ip.parse().unwrap());
        let future = Accept::<From, ()>::accept(cap, stream, ());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(future).ok().map(|(s, ())| s)
    }

    #[test]
    fn one_address_cannot_take_every_place() {
        let cap = Capped::new(Through, 6, 2);
        let a1 = accept(&cap, "10.0.0.1").unwrap();
        let a2 = accept(&cap, "10.0.0.1").unwrap();
        assert!(
            accept(&cap, "10.0.0.1").is_none(),
            "a third from one address"
        );
        // Others still get in, up to the total.
        let others: Vec<_> = ["10.0.0.2", "10.0.0.2", "10.0.0.3", "::1"]
            .iter()
            .map(|ip| accept(&cap, ip).unwrap())
            .collect();
        assert!(accept(&cap, "10.0.0.4").is_none(), "past the total");
        // Closing one gives its address and the total a place back.
        drop(a1);
        assert_eq!(cap.open_from("10.0.0.1".parse().unwrap()), 1);
        let again = accept(&cap, "10.0.0.1").unwrap();
        assert!(
            accept(&cap, "10.0.0.4").is_none(),
            "the total is full again"
        );
        drop((a2, again, others));
        // One IPv6 /64 is one address.
        let v6: Vec<_> = ["2001:db8::1", "2001:db8::2:3"]
            .iter()
            .map(|ip| accept(&cap, ip).unwrap())
            .collect();
        assert!(
            accept(&cap, "2001:db8::ffff:1").is_none(),
            "a third from one /64"
        );
        assert!(accept(&cap, "2001:db8:0:1::1").is_some(), "another /64");
        drop(v6);
        assert_eq!(cap.open_from("10.0.0.1".parse().unwrap()), 0);
        assert!(
            cap.addresses.open.lock().unwrap().is_empty(),
            "no entry left"
        );
        assert_eq!(cap.slots.available_permits(), 6);
    }
}
