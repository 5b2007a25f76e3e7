//! Replay at open, in the background: opening reads the journal files into the journal's view
//! of the objects (so reads of data not yet uploaded are served from the journal at once) and
//! queues their entries for the uploader, which sends them to the remote behind the volume's
//! new writes' backs, idempotently (the remote object's length says what is already there).

use super::*;

/// One decoded journal entry.
struct Entry {
    /// (journal file, offset): journal order.
    pos: (u64, u64),
    kind: u8,
    name: String,
    off: u64,
    data: Chunk,
}

impl Inner {
    /// Loads every journal file: the view of the objects (`listed`, the remote's, with the
    /// journal's creates, appends and deletes applied) and the upload queue, each file followed
    /// by its release. Returns the number for the next journal file.
    ///
    /// What is queued: every entry from the `progress` record on, and before it the creates and
    /// appends of the objects as they are now (an append already on the remote is skipped by
    /// length; the remote may still hold those objects open, unreadable, after a crash, and the
    /// uploader closes them). Appends and creates of an object that a later delete removed are
    /// not queued: replaying them could land in a new object of the same name.
    pub(super) fn load(&self, listed: Vec<ObjectInfo>) -> Result<u64> {
        let mut nums = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))?;
        for e in rd {
            let e = e.map_err(|e| io_err("list", &self.dir, e))?;
            if let Some(n) = e.file_name().to_str().and_then(parse_journal_name) {
                nums.push(n);
            }
        }
        nums.sort_unstable();
        let next = nums.last().map_or(1, |n| n + 1);
        let mut st = self.lock();
        for o in listed {
            let id = st.next_id;
            st.next_id += 1;
            st.objects.insert(
                o.name,
                Obj {
                    id,
                    len: o.len,
                    remote_len: o.len,
                    chunks: BTreeMap::new(),
                },
            );
        }
        let start = self.read_progress()?;
        if nums.is_empty() {
            if start != (0, 0) {
                // Everything was released: the record names a position in a file gone, and
                // the numbering starts again.
                let path = self.dir.join(PROGRESS);
                fs::remove_file(&path).map_err(|e| io_err("delete", &path, e))?;
                sync_dir(&self.dir)?;
            }
            return Ok(next);
        }
        let mut entries = Vec::new();
        let mut ends = Vec::new();
        for (i, &n) in nums.iter().enumerate() {
            let path = self.file_path(n);
            let mut f = OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|e| io_err("open journal", &path, e))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| io_err("read journal", &path, e))?;
            let file = Arc::new(f);
            let mut at = 0usize;
            while at < buf.len() {
                let Some(e) = decode_entry(&buf, at) else {
                    if i + 1 < nums.len() {
                        return Err(Error::corrupt(
                            self.remote.location(),
                            path.display().to_string(),
                            at as u64,
                            "journal entry damaged before the last journal file",
                        ));
                    }
                    tracing::info!(journal = %path.display(), offset = at, dropped = buf.len() - at, "torn journal tail cut at replay");
                    break;
                };
                entries.push(Entry {
                    pos: (n, at as u64),
                    kind: e.kind,
                    name: e.name,
                    off: e.off,
                    data: Chunk {
                        file: file.clone(),
                        file_off: e.data_off,
                        len: e.data_len,
                    },
                });
                at += e.total as usize;
            }
            ends.push((n, entries.len()));
            st.journal_bytes += buf.len() as u64;
            st.files.insert(
                n,
                JournalFile {
                    file,
                    size: buf.len() as u64,
                },
            );
        }
        // The last delete of each name: entries of that name before it are of a removed object.
        let mut last_delete: HashMap<&str, usize> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.kind == KIND_DELETE {
                last_delete.insert(e.name.as_str(), i);
            }
        }
        let live = |i: usize, e: &Entry| last_delete.get(e.name.as_str()).is_none_or(|&d| i > d);
        // The view: the journal's entries applied, in order, to what the remote lists.
        for e in &entries {
            match e.kind {
                KIND_DELETE => {
                    st.objects.remove(&e.name);
                }
                KIND_CREATE => {
                    let id = st.next_id;
                    st.next_id += 1;
                    st.objects.insert(
                        e.name.clone(),
                        Obj {
                            id,
                            len: 0,
                            remote_len: 0,
                            chunks: BTreeMap::new(),
                        },
                    );
                }
                _ => {
                    let id = st.next_id;
                    let o = st.objects.entry(e.name.clone()).or_insert(Obj {
                        id,
                        len: 0,
                        remote_len: 0,
                        chunks: BTreeMap::new(),
                    });
                    if o.id == id {
                        st.next_id += 1;
                    }
                    let o = st
                        .objects
                        .get_mut(&e.name)
                        .ok_or_else(|| Error::Invalid("journal view lost an object".into()))?;
                    if o.chunks.is_empty() {
                        // Below the journal's first byte of it, the object was uploaded and
                        // closed (before its journal file was released); from it on, the
                        // journal serves it until the uploader has closed it again.
                        o.remote_len = o.remote_len.min(e.off);
                    }
                    o.chunks.insert(e.off, e.data.clone());
                    o.len = o.len.max(e.off + e.data.len);
                }
            }
        }
        // The queue, in journal order, each file followed by its release.
        let (mut items, mut bytes) = (0usize, 0u64);
        let mut from = 0;
        for (n, end) in ends {
            for (i, e) in entries.iter().enumerate().take(end).skip(from) {
                let item = match e.kind {
                    KIND_DELETE if e.pos >= start => Item::Delete {
                        name: e.name.clone(),
                        at: e.pos,
                    },
                    KIND_DELETE => continue,
                    _ if !live(i, e) => continue,
                    kind => {
                        let id = st.objects.get(&e.name).map_or(0, |o| o.id);
                        if kind == KIND_CREATE {
                            Item::Create {
                                name: e.name.clone(),
                                id,
                            }
                        } else {
                            bytes += e.data.len;
                            Item::Append {
                                name: e.name.clone(),
                                id,
                                off: e.off,
                                data: e.data.clone(),
                            }
                        }
                    }
                };
                st.queue.push_back(item);
                items += 1;
            }
            from = end;
            st.queue.push_back(Item::Rotate { file_no: n });
        }
        tracing::info!(remote = %self.remote.location(), items, bytes, "journal replay queued: uploads in the background");
        Ok(next)
    }

    pub(super) fn read_progress(&self) -> Result<(u64, u64)> {
        let path = self.dir.join(PROGRESS);
        match fs::read(&path) {
            Ok(b) if b.len() == 20 => {
                let crc = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
                if crc32c::crc32c(&b[..16]) != crc {
                    return Err(Error::corrupt(
                        self.remote.location(),
                        path.display().to_string(),
                        0,
                        "journal progress record damaged",
                    ));
                }
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[..8]);
                let f = u64::from_le_bytes(x);
                x.copy_from_slice(&b[8..16]);
                Ok((f, u64::from_le_bytes(x)))
            }
            Ok(_) => Err(Error::corrupt(
                self.remote.location(),
                path.display().to_string(),
                0,
                "journal progress record has the wrong size",
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok((0, 0)),
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    pub(super) fn write_progress(&self, pos: (u64, u64)) -> Result<()> {
        let mut b = Vec::with_capacity(20);
        b.extend_from_slice(&pos.0.to_le_bytes());
        b.extend_from_slice(&pos.1.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join("progress.tmp");
        let path = self.dir.join(PROGRESS);
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        f.write_all(&b)
            .and_then(|()| f.sync_data())
            .map_err(|e| io_err("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_err("rename", &path, e))?;
        sync_dir(&self.dir)
    }
}
