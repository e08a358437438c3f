//! Accept requests whose HTTP/2 `:authority` is not a valid `host:port`.
//!
//! h2 0.4 resets every request stream whose `:authority` does not parse as an
//! [`http::uri::Authority`] (RST_STREAM PROTOCOL_ERROR, "malformed authority")
//! and has no switch to relax that. Real clients send such values: etcdctl 3.4
//! sends the endpoint URL (`http://127.0.0.1:2379`), some grpc-go resolvers send
//! `#initially=[...]`. [`AuthorityFix`] sits between the accepted socket and
//! hyper and rewrites the client-to-server byte stream so h2 only ever sees a
//! well-formed `:authority`; server-to-client bytes are untouched.
//!
//! Header blocks are HPACK-compressed against a dynamic table kept in step on
//! both ends, so one block cannot be patched on its own: we track the client's
//! table (with loona-hpack). While every `:authority` is valid, blocks go to h2
//! unchanged (its table mirrors the client's; most clients never need more,
//! and h2 then decodes table references instead of literals). From the first
//! block that needs a fix, every block is re-encoded without the dynamic table,
//! starting with an update that empties h2's, so h2's decoder never again
//! depends on state we did not send it; that block is decoded from a copy of the
//! table as it stood before it (`shadow`). Fields that only use the static table
//! are copied unchanged, which keeps the cost per request at a few microseconds.
//!
//! It must wrap the *plaintext* stream: with tonic's own TLS the wrapper would
//! see ciphertext, find no HTTP/2 preface and stay out of the way.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use http::uri::Authority;
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::huffman::HuffmanDecoder;
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames we emit stay within the SETTINGS_MAX_FRAME_SIZE every peer must
/// accept, so the server's actual setting never matters.
const OUT_FRAME_MAX: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE that h2 servers advertise (its default); a client
/// table size update above it is a compression error.
const HPACK_TABLE_MAX: usize = 4096;
/// Upper bound on a header block, both as received and as re-encoded (indexed
/// references can expand a small block into a huge one). Frame lengths need no
/// separate bound: the 24-bit length field caps them at 16 MiB, and only header
/// frames are buffered whole.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
const READ_CHUNK: usize = 8192;
/// Buffers that grew past this for one big header block are released afterwards
/// rather than kept for the life of the connection.
const KEEP_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// loona-hpack builds its Huffman table (~16 µs) anew for every coded string
    /// it meets, which doubled the cost of a small gRPC call; so coded strings are
    /// expanded beforehand (`finish_block`) with one table per thread.
    static HUFFMAN: RefCell<HuffmanDecoder> = RefCell::new(HuffmanDecoder::new());
}

enum State {
    /// This many bytes of the client preface seen (and forwarded) so far.
    Preface(usize),
    /// Waiting for a complete frame header.
    Head,
    /// Payload bytes left of a frame we forward unchanged.
    Forward(usize),
    /// Waiting for the whole payload of a HEADERS/CONTINUATION frame.
    Fragment {
        len: usize,
        kind: u8,
        flags: u8,
        stream: u32,
    },
    /// Not HTTP/2 with prior knowledge: leave the stream alone.
    Passthrough,
}

/// The HEADERS frame whose header block is being reassembled.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// A connection stream whose client-to-server HTTP/2 header blocks are
/// rewritten so that a malformed `:authority` is repaired or dropped.
pub struct AuthorityFix<S> {
    inner: S,
    state: State,
    /// Bytes read from `inner` and not yet processed.
    input: BytesMut,
    /// Processed bytes owed to the reader; always delivered before anything else.
    output: BytesMut,
    open: Option<OpenBlock>,
    fragment: Vec<u8>,
    /// The client's dynamic table, kept in step with every block.
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// Blocks go to h2 unchanged (its table then mirrors the client's) until
    /// one carries an `:authority` h2 would refuse; from then on every block
    /// is transcoded (see `finish_block`).
    passthrough: bool,
    /// While passing through: the client's table as of the last block passed,
    /// so a refused block is transcoded against the table it was encoded with.
    shadow: Decoder<'static>,
    /// While passing through: the current block's table changes, replayed on
    /// `shadow` once the block has passed (bytes, and where each run ends or
    /// a size update comes).
    replay_bytes: Vec<u8>,
    replay: Vec<Replay>,
    /// Scratch for fields on their way to the decoder.
    plain: Vec<u8>,
    /// Whether our dynamic table size update to 0 has been sent (see `transcode`).
    table_zeroed: bool,
}

/// A table change of a block passed through, to replay on `shadow`.
enum Replay {
    /// Literals with incremental indexing: `replay_bytes` up to this offset.
    Fields(usize),
    /// A dynamic table size update.
    Size(usize),
}

/// One field representation of a header block (RFC 7541 §6).
struct Field<'a> {
    /// 7: indexed; 6: literal with incremental indexing; 5: dynamic table size
    /// update; 4: literal without indexing or never indexed.
    prefix: u8,
    /// The table index (0: the name is a literal), or the new table size.
    index: usize,
    /// The prefix integer's bytes.
    head: &'a [u8],
    /// A literal's name (when not indexed) and value: raw, and string data.
    strings: [Option<(&'a [u8], &'a [u8])>; 2],
    /// All of its bytes.
    len: usize,
}

impl Field<'_> {
    /// The new size if this is a dynamic table size update (one above the
    /// size both ends agreed is an error), else None.
    fn table_size(&self) -> io::Result<Option<usize>> {
        if self.prefix != 5 {
            return Ok(None);
        }
        if self.index > HPACK_TABLE_MAX {
            return Err(invalid("HPACK table size update above 4096"));
        }
        Ok(Some(self.index))
    }

    /// Static entries other than `:authority` (index 1), referenced or named
    /// without indexing: no table effect, never the authority.
    fn is_static_only(&self) -> bool {
        (2..=61).contains(&self.index) && matches!(self.prefix, 7 | 4)
    }

    /// Appends the field for our decoder, Huffman-coded strings expanded.
    fn push_plain(&self, plain: &mut Vec<u8>) -> io::Result<()> {
        plain.extend_from_slice(self.head);
        for (raw, data) in self.strings.into_iter().flatten() {
            if raw[0] & 0x80 == 0 {
                plain.extend_from_slice(raw);
            } else {
                let decoded = HUFFMAN.with_borrow_mut(|h| h.decode(data));
                let decoded = decoded.map_err(|e| invalid(format!("HPACK Huffman: {e:?}")))?;
                encode_integer_into(decoded.len(), 7, 0, plain)?;
                plain.extend_from_slice(&decoded);
            }
        }
        Ok(())
    }
}

/// The field at the start of `rest`.
fn next_field(rest: &[u8]) -> io::Result<Field<'_>> {
    let first = rest.first().copied().unwrap_or(0);
    let (prefix, literal) = match first {
        0x80.. => (7, false), // indexed field
        0x40.. => (6, true),  // literal with incremental indexing
        0x20.. => (5, false), // dynamic table size update
        _ => (4, true),       // literal without indexing / never indexed
    };
    let (index, used) = hpack_int(rest, prefix)?;
    // A literal carries its value, preceded by its name when not indexed.
    let mut strings = [None, None];
    let mut end = used;
    let count = if !literal {
        0
    } else if index == 0 {
        2
    } else {
        1
    };
    for slot in strings.iter_mut().take(count) {
        let (len, n) = hpack_int(&rest[end..], 7)?;
        let data = rest.get(end + n..end + n + len);
        let data = data.ok_or_else(|| invalid("truncated HPACK string"))?;
        *slot = Some((&rest[end..end + n + len], data));
        end += n + len;
    }
    Ok(Field {
        prefix,
        index,
        head: &rest[..used],
        strings,
        len: end,
    })
}

impl<S> AuthorityFix<S> {
    /// Wraps an accepted (plaintext) connection.
    pub fn new(inner: S) -> Self {
        // Table size updates never reach it: `finish_block` checks and applies them.
        let decoder = Decoder::new();
        // With an empty table the encoder can only emit static indexes and literals.
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(0);
        Self {
            inner,
            state: State::Preface(0),
            input: BytesMut::new(),
            output: BytesMut::new(),
            open: None,
            fragment: Vec::new(),
            decoder,
            encoder,
            passthrough: true,
            shadow: Decoder::new(),
            replay_bytes: Vec::new(),
            replay: Vec::new(),
            plain: Vec::new(),
            table_zeroed: false,
        }
    }

    /// Consumes buffered input until it runs short (returns true: read more)
    /// or a payload can be forwarded as is (returns false).
    fn process(&mut self) -> io::Result<bool> {
        loop {
            match self.state {
                State::Passthrough | State::Forward(_) => return Ok(false),
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(self.input.len());
                    if n == 0 {
                        return Ok(true);
                    }
                    // Matched bytes go out at once: an HTTP/1 client that happens
                    // to start with "P" must not wait on us.
                    if self.input[..n] != PREFACE[seen..seen + n] {
                        self.state = State::Passthrough;
                        return Ok(false);
                    }
                    self.output.put(self.input.split_to(n));
                    self.state = match seen + n {
                        done if done == PREFACE.len() => State::Head,
                        partial => State::Preface(partial),
                    };
                }
                State::Head => {
                    let Some(&[l0, l1, l2, kind, flags, s0, s1, s2, s3]) =
                        self.input.get(..FRAME_HEAD)
                    else {
                        return Ok(true);
                    };
                    let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
                    let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
                    let open = self.open.as_ref().map(|o| o.stream);
                    match kind {
                        // RFC 9113 §6.10: a header block is one HEADERS frame plus
                        // CONTINUATIONs on the same stream, with nothing in between.
                        HEADERS | CONTINUATION => {
                            let in_order = match kind {
                                HEADERS => open.is_none(),
                                _ => open == Some(stream),
                            };
                            if !in_order {
                                return Err(invalid("HEADERS/CONTINUATION out of sequence"));
                            }
                            if self.fragment.len() + len > MAX_HEADER_BLOCK {
                                return Err(invalid("header block too large"));
                            }
                            self.state = State::Fragment {
                                len,
                                kind,
                                flags,
                                stream,
                            };
                        }
                        // Carries a header block too; only servers may send it.
                        PUSH_PROMISE => return Err(invalid("PUSH_PROMISE from a client")),
                        _ if open.is_some() => return Err(invalid("frame inside a header block")),
                        _ => {
                            self.output.put_slice(&self.input[..FRAME_HEAD]);
                            self.state = if len == 0 {
                                State::Head
                            } else {
                                State::Forward(len)
                            };
                        }
                    }
                    self.input.advance(FRAME_HEAD);
                }
                State::Fragment {
                    len,
                    kind,
                    flags,
                    stream,
                } => {
                    if self.input.len() < len {
                        return Ok(true);
                    }
                    let payload = self.input.split_to(len);
                    let mut frag = &payload[..];
                    if kind == HEADERS {
                        if flags & PADDED != 0 {
                            let (&pad, rest) =
                                frag.split_first().ok_or_else(|| invalid("bad padding"))?;
                            let keep = rest.len().checked_sub(usize::from(pad));
                            frag = &rest[..keep.ok_or_else(|| invalid("bad padding"))?];
                        }
                        let mut priority = None;
                        if flags & PRIORITY != 0 {
                            let (p, rest) = frag
                                .split_first_chunk()
                                .ok_or_else(|| invalid("bad priority"))?;
                            priority = Some(*p);
                            frag = rest;
                        }
                        let end_stream = flags & END_STREAM != 0;
                        self.open = Some(OpenBlock {
                            stream,
                            end_stream,
                            priority,
                        });
                    }
                    self.fragment.extend_from_slice(frag);
                    self.state = State::Head;
                    if flags & END_HEADERS != 0 {
                        self.finish_block()?;
                    }
                }
            }
        }
    }

    /// Queues the complete header block as HEADERS (+ CONTINUATION) frames:
    /// unchanged while passing through, else transcoded with `:authority` fixed.
    fn finish_block(&mut self) -> io::Result<()> {
        let Some(open) = self.open.take() else {
            return Err(invalid("no open header block"));
        };
        let fragment = std::mem::take(&mut self.fragment);
        let passes = self.passthrough && self.check_block(&fragment)?;
        let transcoded = if passes {
            None
        } else {
            Some(self.transcode(&fragment)?)
        };
        self.emit(&open, transcoded.as_deref().unwrap_or(&fragment));
        if fragment.capacity() <= KEEP_CAPACITY {
            self.fragment = fragment;
            self.fragment.clear();
        }
        Ok(())
    }

    /// While passing through: decodes the block against the client's table and
    /// tells whether h2 can take it as it is (every `:authority` in it valid;
    /// those in the dynamic table were checked when they entered it). A block
    /// that cannot ends the passthrough: our table goes back to where it was
    /// before the block (`shadow`), for `transcode`.
    fn check_block(&mut self, fragment: &[u8]) -> io::Result<bool> {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        self.replay_bytes.clear();
        self.replay.clear();
        let (mut valid, mut decoded) = (true, 0);
        let mut rest = fragment;
        while !rest.is_empty() {
            let field = next_field(rest)?;
            if let Some(size) = field.table_size()? {
                valid &= self.check_fields(&plain, &mut decoded)?;
                plain.clear();
                self.decoder.set_max_table_size(size);
                self.replay.push(Replay::Size(size));
            } else if !field.is_static_only() {
                let start = plain.len();
                field.push_plain(&mut plain)?;
                if field.prefix == 6 {
                    self.replay_bytes.extend_from_slice(&plain[start..]);
                    self.replay.push(Replay::Fields(self.replay_bytes.len()));
                }
            }
            rest = &rest[field.len..];
        }
        valid &= self.check_fields(&plain, &mut decoded)?;
        self.plain = plain;
        if !valid {
            self.decoder = std::mem::take(&mut self.shadow);
            self.passthrough = false;
            return Ok(false);
        }
        let mut from = 0;
        for step in &self.replay {
            match *step {
                Replay::Size(size) => self.shadow.set_max_table_size(size),
                Replay::Fields(to) => {
                    self.shadow
                        .decode_with_cb(&self.replay_bytes[from..to], |_, _| {})
                        .map_err(|e| invalid(format!("HPACK decoding: {e}")))?;
                    from = to;
                }
            }
        }
        Ok(true)
    }

    /// Decodes `plain` (no Huffman); false if it holds an `:authority` h2
    /// refuses. `decoded` counts the bytes the fields expand to.
    fn check_fields(&mut self, plain: &[u8], decoded: &mut usize) -> io::Result<bool> {
        let mut valid = true;
        if !plain.is_empty() {
            self.decoder
                .decode_with_cb(plain, |name, value| {
                    *decoded += name.len() + value.len();
                    if &*name == b":authority" && Authority::try_from(&*value).is_err() {
                        valid = false;
                    }
                })
                .map_err(|e| invalid(format!("HPACK decoding: {e}")))?;
        }
        if *decoded > MAX_HEADER_BLOCK {
            return Err(invalid("decoded header block too large"));
        }
        Ok(valid)
    }

    /// The block re-encoded without the dynamic table, `:authority` fixed.
    fn transcode(&mut self, fragment: &[u8]) -> io::Result<Vec<u8>> {
        let mut block = Vec::with_capacity(fragment.len() + 64);
        if !self.table_zeroed {
            // Shrinks h2's table to 0, so the literals-with-indexing our encoder
            // may emit are evicted at once and both tables stay empty for good.
            block.push(0x20);
            self.table_zeroed = true;
        }
        // Fields are walked here (RFC 7541 §6) and only those that involve the
        // dynamic table or `:authority` go through loona-hpack; runs of them are
        // collected in `plain`, with Huffman-coded strings expanded.
        let mut plain = Vec::new();
        let mut rest = fragment;
        while !rest.is_empty() {
            let field = next_field(rest)?;
            if let Some(size) = field.table_size()? {
                // Applied to our table only; h2's stays at size 0.
                self.reencode(&mut plain, &mut block)?;
                self.decoder.set_max_table_size(size);
            } else if field.is_static_only() {
                // Copied as they are: no Huffman decoding (h2 clients send
                // `:path` this way).
                self.reencode(&mut plain, &mut block)?;
                block.extend_from_slice(&rest[..field.len]);
            } else {
                field.push_plain(&mut plain)?;
            }
            rest = &rest[field.len..];
        }
        self.reencode(&mut plain, &mut block)?;
        if block.len() > MAX_HEADER_BLOCK {
            return Err(invalid("decoded header block too large"));
        }
        Ok(block)
    }

    /// Queues `block` as a HEADERS frame and as many CONTINUATIONs as it needs.
    fn emit(&mut self, open: &OpenBlock, block: &[u8]) {
        let prio = open.priority.as_ref().map_or(&[][..], |p| &p[..]);
        let mut flags = if open.end_stream { END_STREAM } else { 0 };
        if open.priority.is_some() {
            flags |= PRIORITY;
        }
        let (mut chunk, mut rest) = block.split_at(block.len().min(OUT_FRAME_MAX - prio.len()));
        let mut kind = HEADERS;
        loop {
            if rest.is_empty() {
                flags |= END_HEADERS;
            }
            let len = prio.len() + chunk.len();
            self.output.put_uint(len as u64, 3);
            self.output.put_u8(kind);
            self.output.put_u8(flags);
            self.output.put_u32(open.stream);
            if kind == HEADERS {
                self.output.put_slice(prio);
            }
            self.output.put_slice(chunk);
            if rest.is_empty() {
                return;
            }
            (chunk, rest) = rest.split_at(rest.len().min(OUT_FRAME_MAX));
            (kind, flags) = (CONTINUATION, 0);
        }
    }

    /// Decodes `plain` (no Huffman) with the connection's decoder and appends the
    /// fields, `:authority` repaired, re-encoded without the dynamic table.
    fn reencode(&mut self, plain: &mut Vec<u8>, block: &mut Vec<u8>) -> io::Result<()> {
        if plain.is_empty() {
            return Ok(());
        }
        let encoder = &mut self.encoder;
        let mut written = Ok(());
        self.decoder
            .decode_with_cb(plain, |name, value| {
                let value = match &*name {
                    b":authority" => match fix_authority(&value) {
                        Some(fixed) => fixed,
                        None => return,
                    },
                    _ => &value,
                };
                // Indexed references can expand a small block enormously.
                if written.is_ok() && block.len() <= MAX_HEADER_BLOCK {
                    written = encoder.encode_header_into((&name, value), block);
                }
            })
            .map_err(|e| invalid(format!("HPACK decoding: {e}")))?;
        plain.clear();
        written
    }
}

/// The `:authority` value h2 will accept: unchanged when valid, otherwise without
/// a leading `scheme://` and anything from the first '/'; `None` drops the field.
fn fix_authority(value: &[u8]) -> Option<&[u8]> {
    if Authority::try_from(value).is_ok() {
        return Some(value);
    }
    let rest = match value.windows(3).position(|w| w == b"://") {
        Some(i) => &value[i + 3..],
        None => value,
    };
    let host = rest.split(|&b| b == b'/').next().unwrap_or(rest);
    Authority::try_from(host).is_ok().then_some(host)
}

/// An HPACK integer with a `prefix`-bit prefix (RFC 7541 §5.1) and the bytes it
/// took; like loona-hpack, at most 4 continuation bytes.
fn hpack_int(buf: &[u8], prefix: u8) -> io::Result<(usize, usize)> {
    let mask = (1u8 << prefix) - 1;
    let first = buf
        .first()
        .ok_or_else(|| invalid("truncated HPACK integer"))?
        & mask;
    if first < mask {
        return Ok((usize::from(first), 1));
    }
    let mut value = usize::from(mask);
    for (i, &b) in buf.iter().enumerate().skip(1).take(4) {
        value += usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(invalid("bad HPACK integer"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    /// Fills `buf` with as much as is ready without waiting, so hyper sees
    /// whole batches of frames as it would from the socket; the inner stream is
    /// polled only while nothing has been delivered, so we never hold back data.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        while buf.remaining() > 0 {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                continue;
            }
            let limit = match this.state {
                State::Passthrough => usize::MAX,
                State::Forward(left) => left,
                _ => {
                    if !this.process()? || !this.output.is_empty() {
                        continue;
                    }
                    if buf.filled().len() > start {
                        break;
                    }
                    if this.input.is_empty() && this.input.capacity() > KEEP_CAPACITY {
                        this.input = BytesMut::new();
                    }
                    let want = match this.state {
                        State::Fragment { len, .. } => len.saturating_sub(this.input.len()),
                        _ => 0,
                    };
                    this.input.reserve(want.max(READ_CHUNK));
                    if ready!(poll_read_buf(
                        Pin::new(&mut this.inner),
                        cx,
                        &mut this.input
                    ))? == 0
                    {
                        // EOF: a partial frame held here is dropped, so h2 sees a
                        // clean close instead of a truncated frame.
                        break;
                    }
                    continue;
                }
            };
            // Payload we do not rewrite: from our read-ahead if there is any,
            // else straight from the socket into the caller's buffer.
            let n = if !this.input.is_empty() {
                let n = limit.min(this.input.len()).min(buf.remaining());
                buf.put_slice(&this.input[..n]);
                this.input.advance(n);
                n
            } else if buf.filled().len() > start {
                break;
            } else {
                let dst = buf.initialize_unfilled_to(limit.min(buf.remaining()));
                let mut sub = ReadBuf::new(dst);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                buf.advance(n);
                if n == 0 {
                    break;
                }
                n
            };
            if let State::Forward(left) = &mut this.state {
                *left -= n;
                if *left == 0 {
                    this.state = State::Head;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use tokio::io::AsyncReadExt;

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;
    type Frame = (u8, u8, u32, Vec<u8>);

    /// Inner stream that hands out the input in the given pieces, one per read,
    /// each after a `Pending` as if it had just arrived.
    struct Pieces(VecDeque<Vec<u8>>, bool);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.1 = !self.1;
            if self.1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(front) = self.0.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.drain(..n);
                if front.is_empty() {
                    self.0.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Everything the wrapper yields for `pieces`, read `read_size` bytes at a time.
    async fn run(pieces: Vec<&[u8]>, read_size: usize) -> io::Result<Vec<u8>> {
        let pieces = pieces
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(<[u8]>::to_vec);
        let mut fix = AuthorityFix::new(Pieces(pieces.collect(), false));
        let (mut out, mut buf) = (Vec::new(), vec![0; read_size]);
        loop {
            match fix.read(&mut buf).await? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = u32::try_from(payload.len()).expect("len").to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    fn parse_frames(mut b: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !b.is_empty() {
            let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            frames.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        frames
    }

    /// Decodes the header blocks of our output, as h2 would (one decoder for the
    /// connection), and checks that each block from the `transcoded`th on also
    /// decodes with a fresh decoder: proof that once transcoding, we never
    /// reference the dynamic table.
    fn decode_blocks(frames: &[Frame], transcoded: usize) -> Vec<Headers> {
        let (mut conn, mut blocks, mut block) = (Decoder::new(), Vec::new(), Vec::new());
        for (kind, flags, _, payload) in frames {
            match *kind {
                HEADERS if flags & PRIORITY != 0 => block.extend(&payload[5..]),
                HEADERS | CONTINUATION => block.extend(payload),
                _ => continue,
            }
            assert_eq!(flags & PADDED, 0);
            if flags & END_HEADERS != 0 {
                let headers = conn.decode(&block).expect("decode");
                if blocks.len() >= transcoded {
                    assert_eq!(
                        Decoder::new().decode(&block).expect("fresh decode"),
                        headers
                    );
                }
                blocks.push(headers);
                block.clear();
            }
        }
        blocks
    }

    fn headers(list: &[(&str, &str)]) -> Headers {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn request(authority: Option<&str>) -> Headers {
        let mut h = headers(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.KV/Range"),
        ]);
        h.extend(authority.map(|a| (b":authority".to_vec(), a.as_bytes().to_vec())));
        h.extend(headers(&[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("x-custom", "v1"),
        ]));
        h
    }

    fn encode(encoder: &mut Encoder<'_>, h: &Headers) -> Vec<u8> {
        encoder.encode(h.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// Every field as a literal with incremental indexing (as grpc-go sends
    /// `:authority`), then the same list again as dynamic-table indexes only.
    fn encode_indexing(h: &Headers) -> (Vec<u8>, Vec<u8>) {
        let mut block = Vec::new();
        for (name, value) in h {
            block.extend([0x40, name.len() as u8]);
            block.extend(name);
            block.push(value.len() as u8);
            block.extend(value);
        }
        let indexes = (0..h.len()).map(|i| 0x80 | (62 + h.len() - 1 - i) as u8);
        (block, indexes.collect())
    }

    /// A client stream exercising padding, priority, CONTINUATION, pass-through
    /// frames and a second block that relies on the client's dynamic table.
    fn sample() -> Vec<u8> {
        let (block1, block2) = encode_indexing(&request(Some("http://127.0.0.1:2379")));
        let mut first = vec![3];
        first.extend([0x80, 0, 0, 0, 16]);
        first.extend(&block1[..7]);
        first.extend([0; 3]);
        let mut s = PREFACE.to_vec();
        s.extend(frame(0x4, 0, 0, &[]));
        s.extend(frame(HEADERS, PADDED | PRIORITY, 1, &first));
        s.extend(frame(CONTINUATION, END_HEADERS, 1, &block1[7..]));
        s.extend(frame(0x0, END_STREAM, 1, &[7; 40]));
        s.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block2));
        s.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
        s
    }

    #[tokio::test]
    async fn rewrites_sample_identically_at_every_split() {
        let input = sample();
        let out = run(vec![&input], 4096).await.expect("run");
        assert_eq!(&out[..24], PREFACE);
        let frames = parse_frames(&out[24..]);
        let kinds: Vec<_> = frames.iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(
            kinds,
            [
                (0x4, 0, 0),
                (HEADERS, PRIORITY | END_HEADERS, 1),
                (0x0, END_STREAM, 1),
                (HEADERS, END_HEADERS | END_STREAM, 3),
                (0x8, 0, 0)
            ]
        );
        assert_eq!(frames[1].3[..5], [0x80, 0, 0, 0, 16]);
        assert_eq!(frames[2].3, [7; 40]);
        let fixed = request(Some("127.0.0.1:2379"));
        assert_eq!(decode_blocks(&frames, 0), [fixed.clone(), fixed]);

        for (pieces, read_size) in [(1, 1), (1, 4096), (input.len(), 1)] {
            let pieces = input.chunks(pieces).collect();
            assert_eq!(run(pieces, read_size).await.expect("run"), out);
        }
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(run(vec![a, b], 13).await.expect("run"), out, "split at {i}");
        }
    }

    #[test]
    fn fix_authority_cases() {
        let cases: [(&str, Option<&str>); 7] = [
            ("127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("example.com", Some("example.com")),
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("https://[::1]:2379/some/path", Some("[::1]:2379")),
            ("#initially=[127.0.0.1:2379]", None),
            ("dns:///etcd:2379", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                fix_authority(input.as_bytes()),
                want.map(str::as_bytes),
                "{input}"
            );
        }
    }

    #[tokio::test]
    async fn drops_unfixable_authority_and_keeps_valid_one() {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        for (stream, authority) in [(1, "#initially=[a:1]"), (3, "etcd-0.local:2379")] {
            let block = encode(&mut enc, &request(Some(authority)));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
        }
        let out = run(vec![&input], 4096).await.expect("run");
        let blocks = decode_blocks(&parse_frames(&out[24..]), 0);
        assert_eq!(blocks, [request(None), request(Some("etcd-0.local:2379"))]);
    }

    /// Valid blocks reach h2 unchanged, dynamic table references included;
    /// the first block with a malformed `:authority` (after a field it adds to
    /// the table) is transcoded from the table as it was before it, and so is
    /// every later block.
    #[tokio::test]
    async fn passes_valid_blocks_through_until_an_authority_needs_fixing() {
        let valid = request(Some("etcd-0:2379"));
        let (inserting, indexed) = encode_indexing(&valid);
        let mut fixing = vec![0x40, 5];
        fixing.extend(b"x-new");
        fixing.extend([1, b'1', 0x41, 10]);
        fixing.extend(b"http://h:1");
        let later = [0x80 | 62, 0x80 | 63, 0x80 | 64];
        let mut input = PREFACE.to_vec();
        for (i, block) in [&inserting[..], &indexed, &fixing, &later]
            .iter()
            .enumerate()
        {
            input.extend(frame(HEADERS, END_HEADERS, 2 * i as u32 + 1, block));
        }
        for read_size in [4096, 7] {
            let out = run(input.chunks(11).collect(), read_size)
                .await
                .expect("run");
            let frames = parse_frames(&out[24..]);
            assert_eq!(frames[0].3, inserting);
            assert_eq!(frames[1].3, indexed);
            assert_eq!(frames[2].3[0], 0x20, "h2's table emptied");
            let fixed = headers(&[(":authority", "h:1")]);
            let want = [
                valid.clone(),
                valid.clone(),
                [headers(&[("x-new", "1")]), fixed.clone()].concat(),
                [fixed, headers(&[("x-new", "1"), ("x-custom", "v1")])].concat(),
            ];
            assert_eq!(decode_blocks(&frames, 2), want);
        }
    }

    #[tokio::test]
    async fn honours_client_table_size_updates() {
        let literal = |name: &str, value: &str| {
            let mut b = vec![0x40, name.len() as u8];
            b.extend(name.as_bytes());
            b.push(value.len() as u8);
            b.extend(value.as_bytes());
            b
        };
        let mut a = literal("x-a", "1");
        a.extend(literal("x-b", "2"));
        // Evict everything, restore the maximum, insert x-c and index it (62).
        let mut b = vec![0x20, 0x3f, 0xe1, 0x1f];
        b.extend(literal("x-c", "3"));
        b.push(0x80 | 62);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &a));
        input.extend(frame(HEADERS, END_HEADERS, 3, &b));
        let out = run(vec![&input], 4096).await.expect("run");
        assert_eq!(out, input, "no authority to fix: passed through");
        let blocks = decode_blocks(&parse_frames(&out[24..]), usize::MAX);
        assert_eq!(blocks[1], headers(&[("x-c", "3"), ("x-c", "3")]));

        // After an eviction, index 63 (formerly x-a) no longer exists.
        let mut bad = input[..input.len() - b.len() - 9].to_vec();
        bad.extend(frame(HEADERS, END_HEADERS, 3, &[0x20, 0x80 | 63]));
        let err = run(vec![&bad], 4096).await.map(|out| out.len());
        assert_eq!(err.map_err(|e| e.kind()), Err(io::ErrorKind::InvalidData));
        // Growing the table past the 4096 the server allows is an error.
        let mut big = PREFACE.to_vec();
        big.extend(frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe2, 0x1f, 0x82]));
        assert!(run(vec![&big], 4096).await.is_err());
    }

    /// Huffman code (RFC 7541 Appendix B) for the few characters the tests need.
    fn huffman(s: &str) -> Vec<u8> {
        let code = |c| match c {
            '0' => "00000",
            '1' => "00001",
            '2' => "00010",
            't' => "01001",
            '/' => "011000",
            '3' => "011001",
            '7' => "011101",
            '9' => "011111",
            'h' => "100111",
            'p' => "101011",
            '.' => "010111",
            ':' => "1011100",
            _ => panic!("no code for {c}"),
        };
        let mut bits: String = s.chars().map(code).collect();
        while !bits.len().is_multiple_of(8) {
            bits.push('1'); // padding is the EOS prefix
        }
        let coded: Vec<u8> = (0..bits.len() / 8)
            .map(|i| u8::from_str_radix(&bits[i * 8..i * 8 + 8], 2).expect("bits"))
            .collect();
        let check = HuffmanDecoder::new().decode(&coded).expect("valid code");
        assert_eq!(check, s.as_bytes());
        coded
    }

    #[tokio::test]
    async fn decodes_huffman_and_rfc_examples() {
        // A Huffman-coded malformed authority, inserted into the table and then
        // referenced by index, as grpc-go does.
        let coded = huffman("http://127.0.0.1:2379");
        let mut first = vec![0x41, 0x80 | coded.len() as u8];
        first.extend(&coded);
        // RFC 7541 C.4.1-C.4.3: requests with Huffman coding and the dynamic table.
        let rfc: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
                0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut input = PREFACE.to_vec();
        for (i, block) in [&first[..], &[0xbe], rfc[0], rfc[1], rfc[2]]
            .iter()
            .enumerate()
        {
            input.extend(frame(HEADERS, END_HEADERS, 2 * i as u32 + 1, block));
        }
        let out = run(input.chunks(3).collect(), 5).await.expect("run");
        let blocks = decode_blocks(&parse_frames(&out[24..]), 0);
        let authority = headers(&[(":authority", "127.0.0.1:2379")]);
        let get = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        let mut c43 = get.to_vec();
        c43[1].1 = "https";
        c43[2].1 = "/index.html";
        c43.push(("custom-key", "custom-value"));
        let want = [
            authority.clone(),
            authority,
            headers(&get),
            [headers(&get), headers(&[("cache-control", "no-cache")])].concat(),
            headers(&c43),
        ];
        assert_eq!(blocks, want);
    }

    #[tokio::test]
    async fn splits_large_blocks_into_continuations() {
        let mut h = request(Some("http://etcd:2379"));
        h.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = encode(&mut Encoder::new(), &h);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_STREAM, 5, &block[..10]));
        input.extend(frame(CONTINUATION, 0, 5, &block[10..30_000]));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, &block[30_000..]));
        let out = run(input.chunks(1000).collect(), 777).await.expect("run");
        let frames = parse_frames(&out[24..]);
        let shape: Vec<_> = frames.iter().map(|f| (f.0, f.1, f.2, f.3.len())).collect();
        let last = frames.last().map_or(0, |f| f.3.len());
        assert_eq!(
            shape,
            [
                (HEADERS, END_STREAM, 5, 16_384),
                (CONTINUATION, 0, 5, 16_384),
                (CONTINUATION, END_HEADERS, 5, last)
            ]
        );
        h[3].1 = b"etcd:2379".to_vec();
        assert_eq!(decode_blocks(&frames, 0), [h]);
    }

    #[tokio::test]
    async fn refuses_oversized_or_broken_blocks() {
        let oversized = |tail: Vec<u8>| {
            let mut input = PREFACE.to_vec();
            input.extend(frame(HEADERS, 0, 1, &[0; 16_384]));
            for _ in 0..64 {
                input.extend(frame(CONTINUATION, 0, 1, &[0; 16_384]));
            }
            input.extend(tail);
            input
        };
        // A 1 MiB+ block, a small block expanding past 1 MiB through indexes,
        // an HPACK error, and frames out of sequence.
        let mut bomb = vec![0x40, 3, b'x', b'-', b'a', 0x7f, 0xa1, 0x1e];
        bomb.extend([b'a'; 4000]);
        bomb.extend([0x80 | 62; 300]);
        let interleaved = [
            frame(HEADERS, 0, 1, &[0x82]),
            frame(0x0, 0, 1, &[]),
            frame(CONTINUATION, END_HEADERS, 1, &[]),
        ];
        let cases = [
            oversized(Vec::new()),
            [PREFACE.to_vec(), frame(HEADERS, END_HEADERS, 1, &bomb)].concat(),
            [
                PREFACE.to_vec(),
                frame(HEADERS, END_HEADERS, 1, &[0x80 | 70]),
            ]
            .concat(),
            [
                PREFACE.to_vec(),
                frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            ]
            .concat(),
            [PREFACE.to_vec(), interleaved.concat()].concat(),
            [
                PREFACE.to_vec(),
                frame(HEADERS, END_HEADERS | PADDED, 1, &[5, 0x82]),
            ]
            .concat(),
        ];
        for (i, input) in cases.iter().enumerate() {
            let err = run(vec![input], 65_536).await.map(|out| out.len());
            assert_eq!(
                err.map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidData),
                "case {i}"
            );
        }
    }

    #[tokio::test]
    async fn passes_other_protocols_through() {
        let inputs: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/1.1\r\n\r\nnot h2 after all",
            &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5],
        ];
        for input in inputs {
            assert_eq!(run(input.chunks(1).collect(), 1).await.expect("run"), input);
            assert_eq!(run(vec![input], 4096).await.expect("run"), input);
        }
    }
}
