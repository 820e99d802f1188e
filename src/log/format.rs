//! The bytes of a log file: header and record encoding, and the scan that
//! reads records back and finds where the good prefix ends. The layout is
//! drawn in the module header of [`crate::log`].

use std::fmt;
use std::io;

use super::error::LogError;
use super::storage::LogFile;

pub use super::layout::{HEADER_LEN, MAGIC, MAX_PAYLOAD, RECORD_HEADER_LEN, VERSION};

/// The 24 header bytes of a log whose first record has seq `first_seq`.
pub(crate) fn encode_header(first_seq: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a header and returns the first seq it holds. Checks, in order:
/// length, magic, version (so a newer format is reported as such, not as
/// damage), then the header checksum.
pub(crate) fn decode_header(path: &str, bytes: &[u8]) -> Result<u64, LogError> {
    if bytes.len() < HEADER_LEN as usize {
        return Err(LogError::TruncatedHeader {
            path: path.to_string(),
            expected: HEADER_LEN,
            found: bytes.len() as u64,
        });
    }
    if bytes[0..8] != MAGIC {
        return Err(LogError::BadMagic {
            path: path.to_string(),
            found: bytes[0..8].to_vec(),
        });
    }
    let version = u32::from_le_bytes(arr(&bytes[8..12]));
    if version != VERSION {
        return Err(LogError::UnsupportedVersion {
            path: path.to_string(),
            expected: VERSION,
            found: version,
        });
    }
    let stored = u32::from_le_bytes(arr(&bytes[20..24]));
    let computed = crc32fast::hash(&bytes[0..20]);
    if stored != computed {
        return Err(LogError::HeaderChecksum {
            path: path.to_string(),
            stored,
            computed,
        });
    }
    Ok(u64::from_le_bytes(arr(&bytes[12..20])))
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    a
}

/// A record framed and checksummed except for its sequence number, so that
/// the expensive part (copying and hashing the payload) happens before the
/// writer takes its lock; [`PreparedRecord::seal`] then stamps the seq and
/// finishes the checksum in constant time.
pub(crate) struct PreparedRecord {
    bytes: Vec<u8>,
    payload_crc: crc32fast::Hasher,
}

impl PreparedRecord {
    pub(crate) fn new(payload: &[u8]) -> Result<Self, LogError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(LogError::PayloadTooLarge {
                found: payload.len(),
            });
        }
        let mut bytes = Vec::with_capacity(RECORD_HEADER_LEN as usize + payload.len());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 12]); // seq and crc, stamped by seal
        bytes.extend_from_slice(payload);
        let mut payload_crc = crc32fast::Hasher::new();
        payload_crc.update(payload);
        Ok(PreparedRecord { bytes, payload_crc })
    }

    /// Stamps `seq` and the checksum; returns the record's bytes.
    pub(crate) fn seal(mut self, seq: u64) -> Vec<u8> {
        self.bytes[4..12].copy_from_slice(&seq.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.bytes[0..12]);
        crc.combine(&self.payload_crc);
        let crc = crc.finalize();
        self.bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        self.bytes
    }
}

/// The bytes of one record (test helper and reference encoder).
pub fn encode_record(seq: u64, payload: &[u8]) -> Result<Vec<u8>, LogError> {
    Ok(PreparedRecord::new(payload)?.seal(seq))
}

/// Why a scan stopped before the end of the file. Every variant carries
/// the offset of the first byte that was cut: the start of the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Fewer than 16 bytes remain: a record frame was torn.
    TornFrame {
        /// Where the record starts.
        offset: u64,
        /// The bytes after it.
        available: u64,
    },
    /// The frame is whole but the payload runs past the end of the file.
    TornPayload {
        /// Where the record starts.
        offset: u64,
        /// The payload length its frame announces.
        len: u32,
        /// The bytes after the frame.
        available: u64,
    },
    /// The length field is above [`MAX_PAYLOAD`]: garbage, not a record.
    Oversized {
        /// Where the record starts.
        offset: u64,
        /// The length field read.
        len: u32,
    },
    /// The stored checksum does not match the record's bytes.
    BadChecksum {
        /// Where the record starts.
        offset: u64,
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the record's bytes.
        computed: u32,
    },
    /// The checksum holds but the sequence number is not the next one.
    WrongSeq {
        /// Where the record starts.
        offset: u64,
        /// The seq that should come next.
        expected: u64,
        /// The seq in the frame.
        found: u64,
    },
}

impl Damage {
    /// Offset of the damaged record: everything from here on is cut.
    pub fn offset(&self) -> u64 {
        match *self {
            Damage::TornFrame { offset, .. }
            | Damage::TornPayload { offset, .. }
            | Damage::Oversized { offset, .. }
            | Damage::BadChecksum { offset, .. }
            | Damage::WrongSeq { offset, .. } => offset,
        }
    }

    /// True for an incomplete last record: the expected outcome of a crash
    /// during a write. The other kinds mean the bytes are wrong.
    pub fn is_torn_tail(&self) -> bool {
        matches!(self, Damage::TornFrame { .. } | Damage::TornPayload { .. })
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Damage::TornFrame { offset, available } => write!(
                f,
                "torn record at offset {offset}: expected a {RECORD_HEADER_LEN}-byte frame, found {available} bytes"
            ),
            Damage::TornPayload {
                offset,
                len,
                available,
            } => write!(
                f,
                "torn record at offset {offset}: expected a {len}-byte payload, found {available} bytes"
            ),
            Damage::Oversized { offset, len } => write!(
                f,
                "bad record at offset {offset}: length {len} exceeds the maximum payload of {MAX_PAYLOAD} bytes"
            ),
            Damage::BadChecksum {
                offset,
                stored,
                computed,
            } => write!(
                f,
                "bad record at offset {offset}: stored checksum {stored:#010x}, bytes hash to {computed:#010x}"
            ),
            Damage::WrongSeq {
                offset,
                expected,
                found,
            } => write!(
                f,
                "bad record at offset {offset}: expected seq {expected}, found seq {found}"
            ),
        }
    }
}

/// What a scan (and the recovery done by [`LogWriter::open`]) found.
///
/// [`LogWriter::open`]: super::LogWriter::open
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The file (path or `memory:NAME`).
    pub path: String,
    /// The seq the header says the file starts at.
    pub first_seq: u64,
    /// How many good records were read.
    pub records: u64,
    /// The seq of the last good record, if any.
    pub last_seq: Option<u64>,
    /// Bytes of the good prefix (header included).
    pub valid_len: u64,
    /// Length of the file as found.
    pub file_len: u64,
    /// Where the file was cut (by `open`) or would be cut (by `scan`):
    /// `Some(valid_len)` when there were bytes after the good prefix.
    pub truncated_at: Option<u64>,
    /// `file_len - valid_len`: how many bytes were (or would be) cut.
    pub bytes_cut: u64,
    /// Why the scan stopped before the end of the file.
    pub reason: Option<Damage>,
}

impl Recovery {
    /// The seq the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.first_seq.saturating_add(self.records)
    }

    /// True when the whole file was good.
    pub fn is_clean(&self) -> bool {
        self.reason.is_none()
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} record(s)", self.path, self.records)?;
        if let Some(last) = self.last_seq {
            write!(f, " (seq {}..={last})", self.first_seq)?;
        }
        match &self.reason {
            None => write!(f, ", clean"),
            Some(d) => write!(
                f,
                ", cut {} byte(s) at offset {}: {d}",
                self.bytes_cut, self.valid_len
            ),
        }
    }
}

/// Reads the header and then records in order, handing each good one to
/// `visit`, and stops at the first torn or damaged record. Does not modify
/// the file. A record after a bad one is never visited, even if it looks
/// good: nothing proves it belongs after the records before the damage.
pub(crate) fn scan(
    file: &mut dyn LogFile,
    path: &str,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<Recovery, LogError> {
    let file_len = file.len().map_err(|e| LogError::io(path, "stat", e))?;
    let mut reader = Reader::new(file, path);

    let mut header = [0u8; HEADER_LEN as usize];
    let n = HEADER_LEN.min(file_len) as usize;
    reader.read_exact(&mut header[..n])?;
    let first_seq = decode_header(path, &header[..n])?;
    scan_records(reader, file_len, HEADER_LEN, first_seq, visit)
}

/// [`scan`] of the records from byte `offset` on (a record boundary past
/// the header, as a [`Recovery::valid_len`] is), the first expected to be
/// `first_seq`: what a reader following a growing log reads of its new
/// bytes. The `Recovery` speaks of those records only (`first_seq` is the
/// one given; `valid_len` and `file_len` are offsets in the whole file).
pub(crate) fn scan_from(
    file: &mut dyn LogFile,
    path: &str,
    offset: u64,
    first_seq: u64,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<Recovery, LogError> {
    let file_len = file.len().map_err(|e| LogError::io(path, "stat", e))?;
    if offset < HEADER_LEN || offset > file_len {
        return Err(LogError::io(
            path,
            "read",
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("offset {offset} is not a record boundary of a {file_len}-byte log"),
            ),
        ));
    }
    let mut reader = Reader::new(file, path);
    reader.pos = offset;
    scan_records(reader, file_len, offset, first_seq, visit)
}

/// The records of `reader` from `offset` (where it stands) to `file_len`.
fn scan_records(
    mut reader: Reader<'_>,
    file_len: u64,
    mut offset: u64,
    first_seq: u64,
    visit: &mut dyn FnMut(u64, &[u8]),
) -> Result<Recovery, LogError> {
    let path = reader.path;
    let mut expected = first_seq;
    let mut records = 0u64;
    let mut payload = Vec::new();
    let mut reason = None;
    while offset < file_len {
        let available = file_len - offset;
        if available < RECORD_HEADER_LEN {
            reason = Some(Damage::TornFrame { offset, available });
            break;
        }
        let mut frame = [0u8; RECORD_HEADER_LEN as usize];
        reader.read_exact(&mut frame)?;
        let len = u32::from_le_bytes(arr(&frame[0..4]));
        let seq = u64::from_le_bytes(arr(&frame[4..12]));
        let stored = u32::from_le_bytes(arr(&frame[12..16]));
        if len as usize > MAX_PAYLOAD {
            reason = Some(Damage::Oversized { offset, len });
            break;
        }
        let after_frame = available - RECORD_HEADER_LEN;
        if u64::from(len) > after_frame {
            reason = Some(Damage::TornPayload {
                offset,
                len,
                available: after_frame,
            });
            break;
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[0..12]);
        crc.update(&payload);
        let computed = crc.finalize();
        if computed != stored {
            reason = Some(Damage::BadChecksum {
                offset,
                stored,
                computed,
            });
            break;
        }
        if seq != expected {
            reason = Some(Damage::WrongSeq {
                offset,
                expected,
                found: seq,
            });
            break;
        }
        visit(seq, &payload);
        records += 1;
        offset += RECORD_HEADER_LEN + u64::from(len);
        match expected.checked_add(1) {
            Some(next) => expected = next,
            None => break, // seq u64::MAX was the last one possible
        }
    }
    let valid_len = offset;
    let bytes_cut = file_len - valid_len;
    Ok(Recovery {
        path: path.to_string(),
        first_seq,
        records,
        last_seq: records.checked_sub(1).map(|k| first_seq + k),
        valid_len,
        file_len,
        truncated_at: (bytes_cut > 0).then_some(valid_len),
        bytes_cut,
        reason,
    })
}

/// Sequential reads through [`LogFile::read_at`] with a buffer, so that a
/// scan of many small records makes few calls.
struct Reader<'a> {
    file: &'a mut dyn LogFile,
    path: &'a str,
    /// File offset of the byte after the buffered ones.
    pos: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

const READ_CHUNK: usize = 256 << 10;

impl<'a> Reader<'a> {
    fn new(file: &'a mut dyn LogFile, path: &'a str) -> Self {
        Reader {
            file,
            path,
            pos: 0,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// Fills `out` entirely; the caller has checked the file is long enough,
    /// so a short read is an I/O error (the file shrank under us).
    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), LogError> {
        let mut done = 0;
        while done < out.len() {
            if self.start < self.end {
                let n = (self.end - self.start).min(out.len() - done);
                out[done..done + n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                done += n;
            } else if out.len() - done >= READ_CHUNK {
                // Large payloads go straight into the caller's buffer.
                let n = read_some(self.file, self.path, self.pos, &mut out[done..])?;
                self.pos += n as u64;
                done += n;
            } else {
                if self.buf.len() < READ_CHUNK {
                    self.buf.resize(READ_CHUNK, 0);
                }
                let n = read_some(self.file, self.path, self.pos, &mut self.buf)?;
                self.pos += n as u64;
                self.start = 0;
                self.end = n;
            }
        }
        Ok(())
    }
}

fn read_some(
    file: &mut dyn LogFile,
    path: &str,
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, LogError> {
    let n = file
        .read_at(offset, buf)
        .map_err(|e| LogError::io(path, "read", e))?;
    if n == 0 {
        return Err(LogError::io(
            path,
            "read",
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ended at offset {offset}, before its stated length"),
            ),
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::FaultyFile;

    type Records = Vec<(u64, Vec<u8>)>;

    fn scan_bytes(bytes: Vec<u8>) -> Result<(Records, Recovery), LogError> {
        let mut f = FaultyFile::from_disk(bytes);
        let mut out = Vec::new();
        let r = scan(&mut f, "memory:t", &mut |s, p| out.push((s, p.to_vec())))?;
        Ok((out, r))
    }

    #[test]
    fn header_round_trip_and_layout() {
        let h = encode_header(42);
        assert_eq!(&h[0..8], b"SEGQLOG\0");
        assert_eq!(&h[8..12], &1u32.to_le_bytes());
        assert_eq!(&h[12..20], &42u64.to_le_bytes());
        assert_eq!(decode_header("p", &h).unwrap(), 42);
    }

    #[test]
    fn record_layout_matches_the_documented_bytes() {
        let r = encode_record(7, b"abc").unwrap();
        assert_eq!(r.len(), 16 + 3);
        assert_eq!(&r[0..4], &3u32.to_le_bytes());
        assert_eq!(&r[4..12], &7u64.to_le_bytes());
        let mut expect = Vec::new();
        expect.extend_from_slice(&3u32.to_le_bytes());
        expect.extend_from_slice(&7u64.to_le_bytes());
        expect.extend_from_slice(b"abc");
        assert_eq!(&r[12..16], &crc32fast::hash(&expect).to_le_bytes());
        assert_eq!(&r[16..], b"abc");
    }

    #[test]
    fn seal_with_combine_equals_a_plain_crc() {
        for len in [0usize, 1, 5, 64, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let r = encode_record(u64::MAX - 3, &payload).unwrap();
            let mut h = crc32fast::Hasher::new();
            h.update(&r[0..12]);
            h.update(&r[16..]);
            assert_eq!(u32::from_le_bytes(arr(&r[12..16])), h.finalize());
        }
    }

    #[test]
    fn scan_reads_records_across_read_chunks() {
        let mut bytes = encode_header(1).to_vec();
        let mut want = Vec::new();
        for i in 0..300u64 {
            let p = vec![i as u8; (i as usize * 977) % 5000];
            bytes.extend(encode_record(i + 1, &p).unwrap());
            want.push((i + 1, p));
        }
        bytes.extend(encode_record(301, &vec![9u8; READ_CHUNK + 17]).unwrap());
        want.push((301, vec![9u8; READ_CHUNK + 17]));
        let len = bytes.len() as u64;
        let (got, r) = scan_bytes(bytes).unwrap();
        assert_eq!(got, want);
        assert!(r.is_clean());
        assert_eq!((r.records, r.last_seq, r.valid_len), (301, Some(301), len));
        assert_eq!(r.next_seq(), 302);
    }

    #[test]
    fn scan_stops_at_each_kind_of_damage() {
        let good = |seq| encode_record(seq, b"payload").unwrap();
        let base = || {
            let mut b = encode_header(10).to_vec();
            b.extend(good(10));
            b
        };
        let at = HEADER_LEN + 16 + 7;

        let mut b = base();
        b.extend_from_slice(&[1, 2, 3]);
        let (_, r) = scan_bytes(b).unwrap();
        assert_eq!(
            r.reason,
            Some(Damage::TornFrame {
                offset: at,
                available: 3
            })
        );
        assert!(r.reason.as_ref().unwrap().is_torn_tail());

        let mut b = base();
        b.extend_from_slice(&good(11)[..20]);
        let (_, r) = scan_bytes(b).unwrap();
        assert_eq!(
            r.reason,
            Some(Damage::TornPayload {
                offset: at,
                len: 7,
                available: 4
            })
        );

        let mut b = base();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&[0; 30]);
        let (_, r) = scan_bytes(b).unwrap();
        assert_eq!(
            r.reason,
            Some(Damage::Oversized {
                offset: at,
                len: u32::MAX
            })
        );

        let mut b = base();
        let mut rec = good(11);
        rec[18] ^= 0x40;
        b.extend(rec);
        let (_, r) = scan_bytes(b).unwrap();
        assert!(matches!(r.reason, Some(Damage::BadChecksum { offset, .. }) if offset == at));

        let mut b = base();
        b.extend(good(12));
        let (got, r) = scan_bytes(b).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            r.reason,
            Some(Damage::WrongSeq {
                offset: at,
                expected: 11,
                found: 12
            })
        );
        assert_eq!(
            (r.valid_len, r.bytes_cut, r.truncated_at),
            (at, 23, Some(at))
        );
        assert!(
            r.to_string().contains("expected seq 11, found seq 12"),
            "{r}"
        );
    }

    #[test]
    fn header_errors_are_specific() {
        let h = encode_header(1);
        assert!(matches!(
            decode_header("p", &h[..5]),
            Err(LogError::TruncatedHeader {
                expected: 24,
                found: 5,
                ..
            })
        ));
        let mut b = h;
        b[0] = b'X';
        assert!(matches!(
            decode_header("p", &b),
            Err(LogError::BadMagic { .. })
        ));
        let mut b = h;
        b[8] = 2;
        assert!(matches!(
            decode_header("p", &b),
            Err(LogError::UnsupportedVersion {
                expected: 1,
                found: 2,
                ..
            })
        ));
        let mut b = h;
        b[13] ^= 1;
        assert!(matches!(
            decode_header("p", &b),
            Err(LogError::HeaderChecksum { .. })
        ));
    }
}
