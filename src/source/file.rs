//! File inputs: one message value per line; `-` reads standard input. Each file is one partition
//! of its topic, positions are 1-based line numbers, and blank lines carry no message.
//! Standard input is read on a helper thread, so a slow pipe never blocks a worker.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};

use anyhow::Context;

use std::io::{Seek, SeekFrom};

use super::{owns, Origin, PartitionInfo, ReadStatus, Reader, ReaderFactory, ResumePoint};

/// Opens the files of one topic, partitioned over workers.
pub(crate) struct FileFactory {
    paths: Vec<String>,
    /// The topic's ordinal, for the assignment rule ([`owns`]).
    topic_ordinal: usize,
}

impl FileFactory {
    /// Checks that every file can be opened, so a bad path fails before the dataflow starts.
    pub fn new(paths: Vec<String>, topic_ordinal: usize) -> anyhow::Result<Self> {
        for p in &paths {
            if p != "-" {
                let meta = std::fs::metadata(p)
                    .with_context(|| format!("cannot read input file '{p}'"))?;
                anyhow::ensure!(!meta.is_dir(), "input '{p}' is a directory, not a file");
                File::open(p).with_context(|| format!("cannot read input file '{p}'"))?;
            }
        }
        Ok(Self {
            paths,
            topic_ordinal,
        })
    }
}

impl ReaderFactory for FileFactory {
    fn topic_ordinal(&self) -> usize {
        self.topic_ordinal
    }

    fn partition_count(&self) -> Option<usize> {
        Some(self.paths.len())
    }

    fn resumable(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.paths.iter().any(|p| p == "-"),
            "standard input (--input TOPIC=-) cannot be read again after a restart, so it cannot \
             be checkpointed; give files or Kafka with --checkpoint"
        );
        Ok(())
    }

    fn open(
        &self,
        index: usize,
        peers: usize,
        resume: &[ResumePoint],
    ) -> anyhow::Result<Box<dyn Reader>> {
        let mut parts = Vec::new();
        let mut inputs = Vec::new();
        for (i, path) in self.paths.iter().enumerate() {
            if !owns(self.topic_ordinal + i, index, peers) {
                continue;
            }
            let at = resume.iter().find(|r| r.id == i as u32);
            let lines = if path == "-" {
                Lines::Piped(stdin_lines())
            } else {
                let mut f =
                    File::open(path).with_context(|| format!("cannot read input file '{path}'"))?;
                if let Some(at) = at {
                    let len = f.metadata()?.len();
                    anyhow::ensure!(
                        len >= at.offset,
                        "input file '{path}' is shorter ({len} bytes) than when it was checkpointed \
                         ({} bytes read); inputs must not change between a run and its restart",
                        at.offset
                    );
                    f.seek(SeekFrom::Start(at.offset))?;
                }
                Lines::File(BufReader::with_capacity(1 << 20, f), 0)
            };
            parts.push(PartitionInfo {
                id: i as u32,
                origin: Origin::File(path.clone()),
            });
            inputs.push(Some(LineInput {
                lines,
                line: at.map_or(0, |a| a.seq),
                offset: at.map_or(0, |a| a.offset),
            }));
        }
        Ok(Box::new(FileReader {
            ended: vec![(0, 0); parts.len()],
            parts,
            inputs,
            buf: Vec::with_capacity(1 << 16),
        }))
    }
}

/// Lines from a regular file (read in place) or from a pipe (read by a helper thread).
enum Lines {
    /// A file, and how much of its buffer the line handed out last covers (consumed on the
    /// next call: lines are lent straight from the buffer, without a copy).
    File(BufReader<File>, usize),
    Piped(Receiver<std::io::Result<Vec<u8>>>),
}

/// One line (with its end-of-line bytes), nothing yet, or the end of the input.
enum Next<'a> {
    Line(&'a [u8]),
    Wait,
    End,
}

impl Lines {
    /// The next line: from the file's buffer when it lies there whole, else gathered in `buf`.
    fn next<'a>(&'a mut self, buf: &'a mut Vec<u8>) -> std::io::Result<Next<'a>> {
        match self {
            Lines::File(r, lent) => {
                r.consume(std::mem::take(lent));
                let avail = r.fill_buf()?;
                if avail.is_empty() {
                    return Ok(Next::End);
                }
                if let Some(i) = memchr::memchr(b'\n', avail) {
                    *lent = i + 1;
                    // Read again: the borrow above ended with the search.
                    return Ok(Next::Line(&r.buffer()[..i + 1]));
                }
                buf.clear();
                r.read_until(b'\n', buf)?;
                Ok(Next::Line(&buf[..]))
            }
            Lines::Piped(rx) => match rx.try_recv() {
                Ok(line) => {
                    *buf = line?;
                    Ok(Next::Line(&buf[..]))
                }
                Err(TryRecvError::Empty) => Ok(Next::Wait),
                Err(TryRecvError::Disconnected) => Ok(Next::End),
            },
        }
    }
}

/// Reads standard input line by line on a helper thread into a bounded channel.
fn stdin_lines() -> Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = sync_channel(4096);
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        loop {
            let mut buf = Vec::new();
            match input.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    if tx.send(Ok(buf)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

struct LineInput {
    lines: Lines,
    line: u64,
    /// Bytes consumed so far (the resume position).
    offset: u64,
}

/// Reads its files round-robin, so that every file's watermark advances together and open
/// window state stays small.
struct FileReader {
    parts: Vec<PartitionInfo>,
    /// `None` once a file has ended.
    inputs: Vec<Option<LineInput>>,
    /// Where each ended file stopped (line count, byte length).
    ended: Vec<(u64, u64)>,
    buf: Vec<u8>,
}

impl Reader for FileReader {
    fn partitions(&self) -> &[PartitionInfo] {
        &self.parts
    }

    fn read(
        &mut self,
        budget: usize,
        out: &mut super::OnMessage<'_>,
    ) -> anyhow::Result<ReadStatus> {
        let live = self.inputs.iter().filter(|i| i.is_some()).count();
        if live == 0 {
            return Ok(ReadStatus::Done);
        }
        let share = (budget / live).max(1);
        let mut waiting = false;
        for (slot, input) in self.inputs.iter_mut().enumerate() {
            let Some(li) = input else { continue };
            for _ in 0..share {
                let next = li
                    .lines
                    .next(&mut self.buf)
                    .with_context(|| format!("reading {:?}", self.parts[slot].origin))?;
                let read = match next {
                    Next::Line(read) => read,
                    Next::Wait => {
                        waiting = true;
                        break;
                    }
                    Next::End => {
                        self.ended[slot] = (li.line, li.offset);
                        *input = None;
                        break;
                    }
                };
                li.line += 1;
                li.offset += read.len() as u64;
                let mut line = read;
                while let Some((last, rest)) = line.split_last() {
                    if matches!(last, b'\n' | b'\r') {
                        line = rest
                    } else {
                        break;
                    }
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                out(slot, li.line, line, None);
            }
        }
        Ok(if self.inputs.iter().all(Option::is_none) {
            ReadStatus::Done
        } else if waiting {
            ReadStatus::Idle(std::time::Duration::from_millis(5))
        } else {
            ReadStatus::More
        })
    }

    fn is_done(&self, slot: usize) -> bool {
        self.inputs[slot].is_none()
    }

    fn position(&self, slot: usize) -> ResumePoint {
        let (seq, offset) = self.inputs[slot]
            .as_ref()
            .map_or(self.ended[slot], |li| (li.line, li.offset));
        ResumePoint {
            id: self.parts[slot].id,
            offset,
            seq,
            end: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_lines_round_robin_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::File::create(&a)
            .unwrap()
            .write_all(b"a1\r\n\n a3\na4")
            .unwrap();
        std::fs::File::create(&b)
            .unwrap()
            .write_all(b"b1\n")
            .unwrap();
        let f =
            FileFactory::new(vec![a.display().to_string(), b.display().to_string()], 0).unwrap();
        let mut r = f.open(0, 1, &[]).unwrap();
        let mut got = Vec::new();
        while r
            .read(2, &mut |s, o, v, _| {
                got.push((s, o, String::from_utf8(v.to_vec()).unwrap()))
            })
            .unwrap()
            != ReadStatus::Done
        {}
        assert_eq!(
            got,
            vec![
                (0, 1, "a1".into()),
                (1, 1, "b1".into()),
                (0, 3, " a3".into()),
                (0, 4, "a4".into())
            ]
        );
        assert!(r.is_done(0) && r.is_done(1));
        // With two workers, the second file belongs to worker 1.
        assert_eq!(f.open(1, 2, &[]).unwrap().partitions()[0].id, 1);
        // Resuming after the third line of the first file reads only the fourth.
        let at = ResumePoint {
            id: 0,
            offset: 9,
            seq: 3,
            end: None,
        };
        let mut r = f.open(0, 1, &[at]).unwrap();
        let mut again = Vec::new();
        r.read(10, &mut |s, o, v, _| again.push((s, o, v.to_vec())))
            .unwrap();
        assert_eq!(again[0], (0, 4, b"a4".to_vec()));
        assert_eq!(r.position(0).offset, 11);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = FileFactory::new(vec!["/no/such/file".into()], 0)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("cannot read input file '/no/such/file'"));
    }
}
