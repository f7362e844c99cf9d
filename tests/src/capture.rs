//! A wiretap for tests: what pod-to-pod traffic looks like on the node.

/// The TCP payload bytes of IPv4 packets between two addresses (either direction), as seen on
/// every interface of this network namespace (an `AF_PACKET` socket): what a wiretap on the
/// node would see of pod-to-pod traffic. Runs until dropped; [`Capture::bytes`] reads so far.
pub struct Capture {
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Capture {
    /// Starts capturing packets between `a` and `b`.
    pub fn start(a: std::net::Ipv4Addr, b: std::net::Ipv4Addr) -> anyhow::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        use std::io::Read as _;
        use std::sync::atomic::Ordering;
        // ETH_P_ALL in network byte order.
        let sock = Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0x0300)))?;
        sock.set_read_timeout(Some(std::time::Duration::from_millis(100)))?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (record, stopped) = (seen.clone(), stop.clone());
        let (a, b) = (a.octets(), b.octets());
        std::thread::spawn(move || {
            let mut sock = sock;
            let mut frame = vec![0u8; 65_536];
            while !stopped.load(Ordering::Relaxed) {
                let Ok(n) = sock.read(&mut frame) else {
                    continue;
                };
                let f = &frame[..n];
                // Ethernet II, IPv4, TCP.
                if n < 14 + 20 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 6 {
                    continue;
                }
                let ip = &f[14..];
                let (src, dst) = (&ip[12..16], &ip[16..20]);
                if !((src == a && dst == b) || (src == b && dst == a)) {
                    continue;
                }
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
                let Some(tcp) = ip.get(ihl..total) else {
                    continue;
                };
                let Some(&off) = tcp.get(12) else {
                    continue;
                };
                if let Some(payload) = tcp.get(usize::from(off >> 4) * 4..) {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(payload);
                }
            }
        });
        Ok(Self { seen, stop })
    }

    /// The payload bytes captured so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
