//! Generated sources (the simulator): each partition's messages are written by a [`Generator`]
//! a market supplies, paced against the wall clock. The same seed and start give the same
//! messages, so a generated run resumes from a checkpoint like any replayable input. A
//! generated partition is an ordinary partition with the same watermark rules as Kafka or files.

use std::time::{Duration, Instant};

use super::{owns, Origin, PartitionInfo, ReadStatus, Reader, ReaderFactory, ResumePoint};
use crate::time::EventTime;

/// Writes one partition's messages.
pub trait Generator: Send {
    /// Writes the message at event time `t` into `out`; returns the event time to the next
    /// message (ms).
    fn message(&mut self, rng: &mut fastrand::Rng, t: EventTime, out: &mut String) -> u64;
}

/// Makes partition `p`'s name and generator for the job's `seed`; `rng` is the partition's own
/// random stream (also handed to every [`Generator::message`]).
pub(crate) type MakeGenerator =
    fn(p: usize, seed: u64, rng: &mut fastrand::Rng) -> (String, Box<dyn Generator>);

/// A market's simulator for one input topic.
#[derive(Clone, Copy)]
pub struct GeneratedTopic {
    /// Number of partitions.
    pub partitions: usize,
    /// Each partition's name and generator.
    pub make: MakeGenerator,
}

/// How a simulation runs.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// Event time per wall time (0: as fast as possible).
    pub speed: f64,
    /// Random seed.
    pub seed: u64,
    /// Event time of the first message.
    pub start: EventTime,
    /// Event time at which every partition ends, if any.
    pub end: Option<EventTime>,
}

/// Opens the generated partitions each worker owns.
pub struct GeneratedFactory {
    topic: GeneratedTopic,
    topic_ordinal: usize,
    pacing: Pacing,
}

impl GeneratedFactory {
    /// A factory for `topic`, the job's topic number `topic_ordinal` (see [`owns`]).
    pub fn new(
        topic: GeneratedTopic,
        topic_ordinal: usize,
        pacing: Pacing,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            pacing.speed >= 0.0 && pacing.speed.is_finite(),
            "--sim-speed must be 0 or more"
        );
        Ok(Self {
            topic,
            topic_ordinal,
            pacing,
        })
    }
}

impl ReaderFactory for GeneratedFactory {
    fn topic_ordinal(&self) -> usize {
        self.topic_ordinal
    }

    fn partition_count(&self) -> Option<usize> {
        Some(self.topic.partitions)
    }

    fn open(
        &self,
        index: usize,
        peers: usize,
        resume: &[ResumePoint],
    ) -> anyhow::Result<Box<dyn Reader>> {
        let (seed, start) = (self.pacing.seed, self.pacing.start);
        let mut streams = Vec::new();
        let mut parts = Vec::new();
        for p in (0..self.topic.partitions).filter(|p| owns(self.topic_ordinal + p, index, peers)) {
            let mut rng = fastrand::Rng::with_seed(
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((self.topic_ordinal * 1000 + p) as u64),
            );
            let (name, gen) = (self.topic.make)(p, seed, &mut rng);
            parts.push(PartitionInfo {
                id: p as u32,
                origin: Origin::Generated(name),
            });
            let mut s = Stream {
                rng,
                gen,
                next: start,
                seq: 0,
            };
            // Resumed: the same seed and start give the same messages; skip those already read.
            if let Some(at) = resume.iter().find(|r| r.id == p as u32) {
                let mut buf = String::new();
                while s.seq < at.seq {
                    buf.clear();
                    s.next += s.gen.message(&mut s.rng, s.next, &mut buf);
                    s.seq += 1;
                }
            }
            streams.push(s);
        }
        // Pacing continues from where the resumed streams stand.
        let paced_from = streams.iter().map(|s| s.next).min().unwrap_or(start);
        Ok(Box::new(GeneratedReader {
            parts,
            streams,
            speed: self.pacing.speed,
            paced_from,
            end: self.pacing.end,
            began: Instant::now(),
            buf: String::new(),
        }))
    }
}

struct Stream {
    rng: fastrand::Rng,
    gen: Box<dyn Generator>,
    /// Event time of the next message.
    next: EventTime,
    seq: u64,
}

struct GeneratedReader {
    parts: Vec<PartitionInfo>,
    streams: Vec<Stream>,
    speed: f64,
    /// Event time at `began`.
    paced_from: EventTime,
    end: Option<EventTime>,
    began: Instant,
    buf: String,
}

impl GeneratedReader {
    fn done(&self, s: &Stream) -> bool {
        self.end.is_some_and(|e| s.next >= e)
    }
    /// Event time the simulation may reach by now.
    fn horizon(&self) -> EventTime {
        if self.speed == 0.0 {
            EventTime::MAX
        } else {
            self.paced_from.saturating_add(
                (self.began.elapsed().as_secs_f64() * 1000.0 * self.speed) as EventTime,
            )
        }
    }
}

impl Reader for GeneratedReader {
    fn partitions(&self) -> &[PartitionInfo] {
        &self.parts
    }

    fn read(
        &mut self,
        budget: usize,
        out: &mut super::OnMessage<'_>,
    ) -> anyhow::Result<ReadStatus> {
        let horizon = self.horizon();
        let mut sent = 0;
        let mut progress = true;
        while sent < budget && progress {
            progress = false;
            for slot in 0..self.streams.len() {
                if self.done(&self.streams[slot]) || self.streams[slot].next > horizon {
                    continue;
                }
                let s = &mut self.streams[slot];
                self.buf.clear();
                let step = s.gen.message(&mut s.rng, s.next, &mut self.buf);
                s.seq += 1;
                s.next += step;
                out(slot, s.seq, self.buf.as_bytes(), None);
                sent += 1;
                progress = true;
            }
        }
        if self.streams.iter().all(|s| self.done(s)) {
            return Ok(ReadStatus::Done);
        }
        let next_due = self
            .streams
            .iter()
            .filter(|s| !self.done(s))
            .map(|s| s.next)
            .min()
            .unwrap_or(horizon);
        if next_due <= horizon {
            Ok(ReadStatus::More)
        } else {
            let wait_ms = ((next_due - horizon) as f64 / self.speed).ceil() as u64;
            Ok(ReadStatus::Idle(Duration::from_millis(
                wait_ms.clamp(1, 200),
            )))
        }
    }

    fn position(&self, slot: usize) -> ResumePoint {
        let seq = self.streams[slot].seq;
        ResumePoint {
            id: self.parts[slot].id,
            offset: seq,
            seq,
            end: None,
        }
    }

    fn is_done(&self, slot: usize) -> bool {
        self.done(&self.streams[slot])
    }

    /// Caught up with the simulation's clock: nothing comes before its next message, so a
    /// sparse generated topic (metadata every 15 minutes) does not hold the watermark back.
    fn is_idle(&self, slot: usize) -> bool {
        self.speed > 0.0 && self.streams[slot].next > self.horizon()
    }

    fn now(&self) -> EventTime {
        if self.speed > 0.0 {
            self.horizon()
        } else {
            crate::time::now_ms()
        }
    }
}
