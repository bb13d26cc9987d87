//! The pumps: per direction, read → decode whole frames → check each (the filter chain, with
//! its counters and audit) → one write of what passes, with the read buffer's policy (small
//! while quiet, 16 KiB while busy, given back when the link goes quiet).

use super::log::LinkEnd;
use super::{Relay, CLOSE_TIMEOUT, READ_CHUNK, READ_IDLE};
use crate::audit::{AuditEvent, Caller, ClusterEvent, Verdict};
use crate::cluster::codec::{self, Frame, FrameError};
use crate::cluster::envelope;
use crate::cluster::filter::{Action, LinkInfo, Message};
use crate::cluster::policy::Direction;
use crate::cluster::{method_index, METHOD_LABELS};
use crate::config::Toward;
use crate::logsafe::{Esc, EscText};
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

impl Relay {
    /// Moves frames from `r` to `w` until the link must end.
    pub(super) async fn pump<R, W>(
        &self,
        link: &Link<'_>,
        dir: Direction,
        initial: BytesMut,
        r: &mut R,
        w: &mut W,
    ) -> LinkEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (limit, idle) = self.bounds(link, dir);
        // Buffers start small and grow with the traffic (see `make_room`), so an idle link
        // holds a few hundred bytes per direction and a busy one reads 16 KiB at a time.
        let mut buf = initial;
        let mut busy = false;
        // At most one read's worth of frames waits here.
        let mut out = Outbox::default();
        let counters = Counters::new(&self.metrics, dir);
        // Only added filters can answer at the edge; without them the read is awaited alone.
        let answering = self.filters.has_added();
        // Idle = no complete message for `idle`, so trickling bytes cannot keep a link alive.
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            let (complete, ending) = self.drain(link, dir, &mut buf, limit, &mut out, &counters);
            if let Some(end) = ending {
                flush_before_end(&out, w, &counters).await;
                return end;
            }
            if out.held.is_some() && buf.is_empty() {
                // The held message is the only owner of its allocation now: it is freed
                // when written, not kept as this buffer's room.
                buf = BytesMut::new();
            }
            if complete {
                // One clock read per read, not per message.
                deadline = tokio::time::Instant::now() + idle;
            }
            if answering {
                link.take_answers(dir, &mut out.batch);
            }
            if !out.is_empty() {
                // Flush before blocking on the next read: nothing may wait in a buffer. A
                // receiver that takes nothing for the idle limit ends the link: a master that
                // keeps sending but never reads would otherwise hold it, the agent's messages
                // stalled unseen.
                match out.write_to(w, idle).await {
                    Ok(()) => {}
                    Err(None) => return LinkEnd::Stalled(dir, idle),
                    Err(Some(e)) => {
                        return LinkEnd::Io(dir.receiver(), format!("write: {e}"));
                    }
                }
                counters.bytes.inc_by(out.len() as u64);
                out.sent(busy);
            }
            let room = make_room(&mut buf, busy);
            let read = tokio::time::timeout_at(deadline, r.read_buf(&mut buf));
            let read = if answering {
                // Filters may answer the other side's messages through this writer.
                tokio::select! {
                    r = read => r,
                    _ = link.answers[dir as usize].ready.notified() => continue,
                }
            } else {
                read.await
            };
            match read {
                Err(_) => return LinkEnd::Idle(dir, idle),
                Ok(Ok(0)) => return LinkEnd::Closed(dir),
                Ok(Ok(n)) => {
                    busy = n == room || n >= READ_IDLE;
                    // Small records are gathered; a full one (16 KiB) is a write's worth
                    // already, and gathering after it measured slower (more reads that wait).
                    if busy && n < READ_CHUNK / 2 {
                        gather(r, &mut buf);
                    }
                }
                Ok(Err(e)) => return LinkEnd::Io(dir.sender(), format!("read: {e}")),
            }
        }
    }

    /// The size limit of one message in `dir`, and the idle limit.
    pub(super) fn bounds(&self, link: &Link<'_>, dir: Direction) -> (usize, Duration) {
        let anon = link.anonymous();
        // Icinga's limits by hierarchy: what comes from a child is capped, what comes from
        // the parent is not (beyond the netstring's 9 digits).
        let from_parent = match link.info.toward {
            Toward::Parent => dir == Direction::Downstream,
            Toward::Child => dir == Direction::Upstream,
        };
        let limit = if anon && dir == Direction::Upstream {
            self.limits.anonymous_size
        } else if from_parent {
            self.limits.parent_size
        } else {
            self.limits.size
        };
        let idle = if anon {
            self.limits.anonymous_idle
        } else {
            self.limits.idle
        };
        (limit, idle)
    }

    /// Counts a framing error: oversize apart from broken framing, since one is a limit to
    /// raise and the other a broken or hostile peer.
    pub(super) fn count_frame_error(&self, dir: Direction, e: &FrameError) {
        let verdict = match e {
            FrameError::TooLarge { .. } => "too_large",
            _ => "malformed",
        };
        self.metrics
            .cluster_messages
            .with_label_values(&[dir.label(), "other", verdict])
            .inc();
    }

    /// Decodes and checks every whole frame in `buf` into `out`: whether any was whole, and
    /// what ends the link in this read (the frames checked before it still go out).
    pub(super) fn drain(
        &self,
        link: &Link<'_>,
        dir: Direction,
        buf: &mut BytesMut,
        limit: usize,
        out: &mut Outbox,
        counters: &Counters,
    ) -> (bool, Option<LinkEnd>) {
        let mut complete = false;
        loop {
            match codec::decode(buf, limit) {
                Ok(Some(frame)) => {
                    complete = true;
                    if let Err(end) = self.check(link, dir, &frame, out, counters) {
                        return (complete, Some(end));
                    }
                }
                Ok(None) => return (complete, None),
                Err(e) => {
                    self.count_frame_error(dir, &e);
                    return (complete, Some(LinkEnd::Frame(dir, e)));
                }
            }
        }
    }

    /// Checks one frame and appends it (possibly rewritten) to `out`, or drops it.
    pub(super) fn check(
        &self,
        link: &Link<'_>,
        dir: Direction,
        frame: &Frame,
        out: &mut Outbox,
        counters: &Counters,
    ) -> Result<(), LinkEnd> {
        let env = match envelope::parse(frame.payload()) {
            Ok(e) => e,
            Err(e) => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&[dir.label(), "other", "malformed"])
                    .inc();
                // Anonymous peers are dropped (Icinga's rule). A known peer's malformed message
                // is dropped and, from the client, counts as a violation: forgiven without
                // end, 50,000 of them were 50,000 log lines and the link stayed.
                if link.anonymous() {
                    return Err(LinkEnd::Malformed(dir, e));
                }
                let n = if dir == Direction::Upstream {
                    link.violations.fetch_add(1, Ordering::Relaxed) + 1
                } else {
                    0
                };
                if let Some(more) = link.log.admit_note() {
                    log::warn!(target: "gatehouse::cluster", "{}: dropped a malformed {} message: {e}; violation {n}/{}{more}", link.who, dir.label(), self.max_violations);
                }
                if dir == Direction::Upstream && n >= self.max_violations {
                    return Err(LinkEnd::Violations(n));
                }
                return Ok(());
            }
        };
        let method = env.method.as_deref();
        let idx = method_index(method);
        let msg = Message::new(dir, frame.payload(), &env);
        let outcome = self.filters.run(&link.info, &msg);
        match outcome.action {
            Action::Forward => out.forward(frame.raw()),
            Action::Rewrite(p) => {
                log::debug!(target: "gatehouse::cluster", "{}: {} {} message rewritten by {}", link.who, Esc(method.unwrap_or("reply")), dir.label(), outcome.by);
                out.batch.extend_from_slice(&codec::encode(&p));
            }
            Action::Deny(why) => {
                return self.deny(link, dir, method.unwrap_or("-"), METHOD_LABELS[idx], &why);
            }
            Action::Drop => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&[dir.label(), METHOD_LABELS[idx], "dropped"])
                    .inc();
                return Ok(());
            }
            Action::Answer(p) => {
                self.metrics
                    .cluster_messages
                    .with_label_values(&[dir.label(), METHOD_LABELS[idx], "answered"])
                    .inc();
                link.answer(dir, &p);
                return Ok(());
            }
            Action::Close(why) => {
                return Err(LinkEnd::Filter(outcome.by.to_string(), why.into_owned()))
            }
        }
        counters.forwarded[idx].inc();
        link.forwarded[dir as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn deny(
        &self,
        link: &Link<'_>,
        dir: Direction,
        method: &str,
        label: &str,
        why: &str,
    ) -> Result<(), LinkEnd> {
        self.metrics
            .cluster_messages
            .with_label_values(&[dir.label(), label, "denied"])
            .inc();
        let n = link.violations.fetch_add(1, Ordering::Relaxed) + 1;
        self.audit.record(&AuditEvent::Cluster(ClusterEvent {
            listener: link.info.listener.to_string(),
            client: link.info.peer.to_string(),
            identity: Caller {
                cn: link.info.identity.cn().map(str::to_string),
                fingerprint: link.fingerprint.map(str::to_string),
                user: None,
                ..Caller::default()
            },
            direction: dir.label(),
            sni: link.info.sni.to_string(),
            toward: match link.info.toward {
                Toward::Parent => "parent",
                Toward::Child => "child",
            },
            method: method.to_string(),
            verdict: Verdict::Denied,
            reason: why.to_string(),
        }));
        log::warn!(target: "gatehouse::cluster", "{}: denied {} {} message ({}); violation {n}/{}", link.who, Esc(method), dir.label(), EscText(why), self.max_violations);
        if n >= self.max_violations {
            return Err(LinkEnd::Violations(n));
        }
        Ok(())
    }
}

/// Sends what was checked before the link's end, best effort and bounded like the close
/// itself: the receiver may be what stalls, and the link ends either way.
pub(super) async fn flush_before_end<W: AsyncWrite + Unpin>(
    out: &Outbox,
    w: &mut W,
    counters: &Counters,
) {
    if out.is_empty() {
        return;
    }
    let written = tokio::time::timeout(CLOSE_TIMEOUT, out.write_to(w, CLOSE_TIMEOUT)).await;
    if matches!(written, Ok(Ok(()))) {
        counters.bytes.inc_by(out.len() as u64);
    }
}

/// The read buffer's policy before a read: a link that went quiet gives a busy-sized buffer
/// back (after a config sync or a burst of check results, thousands of idle links must not
/// keep 16 KiB each); a busy one (its last read filled all the room it was given, or was
/// large) reads 16 KiB at a time, a quiet one a few hundred bytes. Returns the room to read
/// into.
/// The most one pump pass gathers beyond its first read (see [`gather`]).
const GATHER: usize = 4 * READ_CHUNK;

/// Takes, without waiting, what the layers below already hold, up to [`GATHER`] bytes: TLS
/// returns one record per read, and the read-ahead under it often holds many more from the
/// same system call. A peer writing small records (one message each) would otherwise cost a
/// write upstream per record; now one write carries up to 64 KiB. Room grows only once a
/// gathered read brought something (a link that just went quiet keeps its small buffer), and
/// then by a whole record, so that records are not split across writes. An end or an error
/// met here is left for the next read, which meets it again (both are sticky).
fn gather<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let start = buf.len();
    while buf.capacity() - buf.len() >= READ_CHUNK / 2 && buf.len() - start < GATHER {
        // A read that would wait registers this no-op waker; the pump's next read, a real
        // poll, registers its own.
        let read = std::pin::pin!(r.read_buf(buf));
        match read.poll(&mut cx) {
            std::task::Poll::Ready(Ok(n)) if n > 0 => {}
            _ => break,
        }
        if buf.capacity() - buf.len() < READ_CHUNK && buf.len() - start < GATHER {
            buf.reserve(GATHER);
        }
    }
}

pub(super) fn make_room(buf: &mut BytesMut, busy: bool) -> usize {
    // A busy link keeps what `gather` grew (a record and 64 KiB more) until it goes quiet.
    if buf.is_empty() && buf.capacity() > if busy { 8 * READ_CHUNK } else { READ_IDLE } {
        *buf = BytesMut::new();
    }
    // A short read alone must not shrink a busy link's reads.
    let want = if busy { READ_CHUNK } else { READ_IDLE };
    let free = buf.capacity() - buf.len();
    // A busy link has room for a whole TLS record (16 KiB) behind a partial frame, so each
    // record is one read and one write on, not two. A large message part-read already has
    // room for exactly its rest (the codec reserved it): growing more would double its
    // buffer, a second copy's worth.
    let short = if busy { free < want } else { free < want / 4 };
    if free == 0 || (short && buf.len() < READ_CHUNK) {
        buf.reserve(want);
    }
    buf.capacity() - buf.len()
}

/// The hot-path metric children of one direction, resolved once per link (a labelled lookup
/// hashes and locks; an `IntCounter` is one atomic add).
pub(super) struct Counters {
    pub(super) forwarded: Vec<IntCounter>,
    pub(super) bytes: IntCounter,
}

impl Counters {
    pub(super) fn new(m: &Metrics, dir: Direction) -> Counters {
        Counters {
            forwarded: METHOD_LABELS
                .iter()
                .map(|l| {
                    m.cluster_messages
                        .with_label_values(&[dir.label(), l, "forwarded"])
                })
                .collect(),
            bytes: m.cluster_bytes.with_label_values(&[dir.label()]),
        }
    }
}

/// Per-link state shared by the two pumps.
pub(super) struct Link<'a> {
    /// What filters see. The client certificate is encoded only when a certificate request
    /// needs it: thousands of idle links would otherwise each hold a PEM copy of a
    /// certificate the TLS session already keeps.
    pub(super) info: LinkInfo<'a>,
    pub(super) fingerprint: Option<&'a str>,
    pub(super) who: &'a str,
    pub(super) violations: AtomicU32,
    /// One line per 10 s for what the peer can repeat at will (malformed messages).
    pub(super) log: crate::logging::Sampler,
    pub(super) forwarded: [AtomicU64; 2],
    /// Framed answers from filters, by the direction whose writer sends them (an answer to
    /// the client goes out with the downstream pump), and the wake-up of that pump.
    pub(super) answers: [Answers; 2],
}

#[derive(Default)]
pub(super) struct Answers {
    pub(super) frames: Mutex<Vec<u8>>,
    pub(super) ready: tokio::sync::Notify,
}

impl Link<'_> {
    pub(super) fn anonymous(&self) -> bool {
        self.info.identity.cert().is_none()
    }

    /// Queues `payload` (framed) back to the sender of messages travelling in `dir`.
    pub(super) fn answer(&self, dir: Direction, payload: &[u8]) {
        let to = &self.answers[dir.reverse() as usize];
        to.frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(&codec::encode(payload));
        to.ready.notify_one();
    }

    /// Moves queued answers for the writer of `dir` into `out`.
    pub(super) fn take_answers(&self, dir: Direction, out: &mut Vec<u8>) {
        let mut q = self.answers[dir as usize]
            .frames
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        out.append(&mut q);
    }
}

/// Writes all of `buf` and flushes; `Err(None)` when a write or the flush made no progress for
/// `stall` (the receiver takes nothing), `Err(Some(e))` on an I/O error.
pub(super) async fn write_with_progress<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut buf: &[u8],
    stall: Duration,
) -> Result<(), Option<std::io::Error>> {
    while !buf.is_empty() {
        let write = w.write(buf);
        tokio::pin!(write);
        // A write that goes through at once (the common case) arms no timer.
        let n = match poll_once(write.as_mut()).await {
            Some(r) => r,
            None => match tokio::time::timeout(stall, write).await {
                Err(_) => return Err(None),
                Ok(r) => r,
            },
        };
        match n {
            Ok(0) => return Err(Some(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => buf = &buf[n..],
            Err(e) => return Err(Some(e)),
        }
    }
    let flush = w.flush();
    tokio::pin!(flush);
    let r = match poll_once(flush.as_mut()).await {
        Some(r) => r,
        None => match tokio::time::timeout(stall, flush).await {
            Err(_) => return Err(None),
            Ok(r) => r,
        },
    };
    r.map_err(Some)
}

/// `f` polled once: its output if it is ready now, else `None` (its waker stays registered,
/// so awaiting it afterwards loses nothing).
pub(super) async fn poll_once<F: std::future::Future>(
    mut f: std::pin::Pin<&mut F>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| match f.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// What one pass of a pump sends on. Frames checked in one pass go out in one write (one TLS
/// record and syscall per batch instead of per message); a large forwarded message is sent
/// from the read buffer itself rather than copied into the batch, so a direction whose
/// receiver blocks holds that message once, not twice.
#[derive(Default)]
pub(super) struct Outbox {
    /// A large message forwarded as read (it goes first: it was the first of its pass).
    pub(super) held: Option<Bytes>,
    pub(super) batch: Vec<u8>,
}

impl Outbox {
    /// Appends a frame forwarded unchanged.
    pub(super) fn forward(&mut self, raw: &Bytes) {
        if self.held.is_none() && self.batch.is_empty() && raw.len() >= READ_CHUNK {
            self.held = Some(raw.clone());
        } else {
            self.batch.extend_from_slice(raw);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_none() && self.batch.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.held.as_ref().map_or(0, Bytes::len) + self.batch.len()
    }

    /// Writes everything, in order; see [`write_with_progress`].
    pub(super) async fn write_to<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        stall: Duration,
    ) -> Result<(), Option<std::io::Error>> {
        if let Some(h) = &self.held {
            write_with_progress(w, h, stall).await?;
        }
        if !self.batch.is_empty() {
            write_with_progress(w, &self.batch, stall).await?;
        }
        Ok(())
    }

    /// Empties it; the batch keeps its room only while the link is busy and it is small.
    pub(super) fn sent(&mut self, busy: bool) {
        self.held = None;
        self.batch.clear();
        if !busy || self.batch.capacity() > 4 * READ_CHUNK {
            self.batch = Vec::new(); // a quiet link (or one after a large message) holds none
        }
    }
}
