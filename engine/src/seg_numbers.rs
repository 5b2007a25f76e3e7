//! Segment numbering, shared by the writer and the cleaner's copy thread.
//!
//! Recovery replays the segments after a checkpoint in number order and treats a missing number
//! as a lost segment. Both the writer and the copy thread (which works without the volume, see
//! `clean_pass.rs`) create segments, so a number is taken and its object created under one lock:
//! no crash can leave a number taken whose object does not exist while a later one does.

use crate::backend::{Backend, ObjectWriter};
use crate::error::Result;
use crate::format::segment_name;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub(crate) struct SegNumbers {
    next: Mutex<u32>,
}

impl SegNumbers {
    pub(crate) fn new(next: u32) -> SegNumbers {
        SegNumbers {
            next: Mutex::new(next),
        }
    }

    /// The number the next segment will get.
    pub(crate) fn peek(&self) -> u32 {
        *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the next number (recovery, before anything else creates segments).
    pub(crate) fn set(&self, next: u32) {
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// Creates the next segment object; the number is used up only if that succeeds.
    pub(crate) fn create(&self, backend: &dyn Backend) -> Result<(u32, Box<dyn ObjectWriter>)> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let seq = *next;
        let w = backend.create(&segment_name(seq))?;
        *next += 1;
        Ok((seq, w))
    }
}
