//! The file system itself: FUSE requests turned into service and volume calls. Volume files
//! read and write the very engine the NBD server uses (the manager's one open volume), so a
//! write through a file is visible over NBD at once and the reverse; creating, resizing and
//! deleting go through the same service calls as D-Bus, so D-Bus clients see them.
//!
//! Volume files are opened with `FOPEN_DIRECT_IO`: no page cache of the file in the kernel,
//! whose pages would go stale when an NBD client writes the volume.

use super::nodes::{Inodes, Node, ROOT_INO};
use super::owners::{self, Owner, Owners};
use super::status;
use crate::error::Error;
use crate::manager::SharedVolume;
use crate::names::PoolUri;
use crate::service::{Admin, Caller, Service};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use hlfs_engine::Encoder;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the kernel may cache names and attributes: short, so that volumes created,
/// resized or deleted with `hlfs` or over D-Bus show in the mount within a second.
const TTL: Duration = Duration::from_secs(1);
/// Largest write request the kernel sends (with FUSE_MAX_PAGES).
pub const MAX_WRITE: u32 = 1 << 20;
/// How volume files are opened: no page cache in the kernel (it would go stale when an NBD
/// client writes the volume), and direct writes from several threads of one process (qemu's
/// `aio=threads`, fio's psync jobs) in parallel instead of one at a time under the kernel's
/// inode lock: the volume's own lock orders them, and a write that grows the file still takes
/// the kernel's lock (kernel 6.2+; older kernels ignore the flag).
const OPEN_FLAGS: FopenFlags =
    FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);
/// Bytes of the extent map looked at per step of SEEK_DATA/SEEK_HOLE.
const SEEK_WINDOW: u64 = 1 << 32;

/// An open file.
enum Open {
    Volume {
        vol: Arc<SharedVolume>,
        encoder: Encoder,
        writable: bool,
    },
    Snapshot {
        vol: Arc<SharedVolume>,
        snap: String,
    },
    /// A status file, rendered at open.
    Status(Vec<u8>),
}

/// The FUSE file system of one daemon.
pub struct HlfsFs {
    svc: Arc<Service>,
    rt: tokio::runtime::Handle,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<Open>>>,
    next_fh: AtomicU64,
    owners: Owners,
    /// Where `mkdir pools/NEW` creates local pools.
    data_dir: PathBuf,
    /// Owner of directories and default owner of files: the daemon's user.
    uid: u32,
    gid: u32,
    /// Group `hlfs`, if it exists: it owns `pools/` and the pool directories (mode 0775), so
    /// that its members, who may create volumes over D-Bus, may here too.
    admin_gid: Option<u32>,
    started: SystemTime,
}

/// The gid of group `name`, if it exists.
fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getgrnam_r writes only into grp and buf.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(e: &Error) -> Errno {
    use hlfs_client::ErrorKind as K;
    let code = match e.kind() {
        K::NotFound => libc::ENOENT,
        K::Exists => libc::EEXIST,
        K::Busy => libc::EBUSY,
        K::InvalidArgument => libc::EINVAL,
        K::PermissionDenied => libc::EACCES,
        K::Unavailable => libc::EIO,
        K::ReadOnly => libc::EROFS,
        K::NoSpace => libc::ENOSPC,
        K::Corrupt | K::Io => libc::EIO,
        K::NotSupported => libc::EOPNOTSUPP,
    };
    if code == libc::EIO || code == libc::ENOSPC {
        tracing::error!(error = %e, "FUSE view: I/O error");
    } else {
        tracing::debug!(error = %e, errno = code, "FUSE view: refused");
    }
    Errno::from_i32(code)
}

fn engine_errno(what: &str, vol: &SharedVolume, e: hlfs_engine::Error) -> Errno {
    errno(&Error::engine(format!("{what} {}", vol.name()), e))
}

/// A closed volume (daemon shutting down).
fn closing(vol: &SharedVolume) -> Errno {
    tracing::debug!(volume = vol.name(), "FUSE view: volume closing");
    Errno::EIO
}

fn unix_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A name the view may hold: valid UTF-8; `None` otherwise.
fn name_str(name: &OsStr) -> Option<&str> {
    name.to_str()
}

/// Checks a new pool or volume name: over-long names get ENAMETOOLONG, anything else the
/// naming rules refuse (`..`, control characters, `/`, `@`, `%`) EINVAL.
fn new_name(kind: &'static str, name: &OsStr) -> Result<String, Errno> {
    let Some(n) = name_str(name) else {
        return Err(Errno::EINVAL);
    };
    if n.len() > hlfs_client::names::MAX_NAME {
        return Err(Errno::ENAMETOOLONG);
    }
    crate::names::check_name(kind, n).map_err(|e| errno(&e))?;
    Ok(n.to_string())
}

impl HlfsFs {
    pub fn new(
        svc: Arc<Service>,
        rt: tokio::runtime::Handle,
        data_dir: PathBuf,
    ) -> crate::Result<Self> {
        // SAFETY: getegid has no preconditions and cannot fail.
        let gid = unsafe { libc::getegid() };
        let uid = crate::paths::euid();
        let owners = Owners::load(
            &data_dir,
            Owner {
                mode: 0o600,
                uid,
                gid,
            },
        )?;
        Ok(HlfsFs {
            svc,
            rt,
            inodes: Mutex::new(Inodes::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            owners,
            data_dir,
            uid,
            gid,
            admin_gid: group_id(crate::service::ADMIN_GROUP),
            started: SystemTime::now(),
        })
    }

    fn node(&self, ino: INodeNo) -> Result<Node, Errno> {
        lock(&self.inodes).node(ino.0).ok_or(Errno::ENOENT)
    }

    fn ino(&self, n: &Node) -> INodeNo {
        INodeNo(lock(&self.inodes).ino(n))
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Open>, Errno> {
        lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn add_handle(&self, o: Open) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Arc::new(o));
        FileHandle(fh)
    }

    /// Mutations of the tree (create, unlink, mkdir, rmdir) need what D-Bus needs: root or
    /// group `hlfs`, or being the daemon's own user.
    fn admin(&self, req: &Request) -> Result<Admin, Errno> {
        let caller = Caller {
            uid: req.uid(),
            gids: vec![req.gid()],
        };
        if req.uid() == self.uid {
            return Ok(Admin::vouched_by_fuse(caller));
        }
        caller.authorize().map_err(|e| errno(&e))
    }

    fn volume(&self, pool: &str, name: &str) -> Result<Arc<SharedVolume>, Errno> {
        self.svc.manager().volume(pool, name).map_err(|e| errno(&e))
    }

    /// Whether `pool/name` is a volume: O(1) in the pool's size (no listing).
    fn volume_exists(&self, pool: &str, name: &str) -> Result<bool, Errno> {
        if crate::names::check_name("volume", name).is_err() {
            return Ok(false);
        }
        self.svc
            .manager()
            .has_volume(pool, name)
            .map_err(|e| errno(&e))
    }

    fn dir_attr(&self, n: &Node) -> FileAttr {
        let t = self.started;
        let (perm, gid) = match (n, self.admin_gid) {
            (Node::Pools | Node::Pool(_), Some(g)) => (0o775, g),
            _ => (0o755, self.gid),
        };
        FileAttr {
            ino: self.ino(n),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm,
            nlink: 2,
            uid: self.uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Attributes of a volume file (opening the volume if needed).
    fn volume_attr(&self, n: &Node, pool: &str, name: &str) -> Result<FileAttr, Errno> {
        let vol = self.volume(pool, name)?;
        let (uuid, created, size, allocated) = vol
            .read(|v| {
                let st = v.stat();
                (v.meta().uuid, v.meta().created_unix, v.size(), st.allocated)
            })
            .ok_or_else(|| closing(&vol))?;
        let o = self.owners.get(&owners::key(&uuid));
        Ok(self.file_attr(n, o, size, allocated, unix_time(created)))
    }

    fn file_attr(&self, n: &Node, o: Owner, size: u64, allocated: u64, t: SystemTime) -> FileAttr {
        FileAttr {
            ino: self.ino(n),
            size,
            blocks: allocated.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::RegularFile,
            perm: (o.mode & 0o7777) as u16,
            nlink: 1,
            uid: o.uid,
            gid: o.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr(&self, n: &Node) -> Result<FileAttr, Errno> {
        match n {
            Node::Volume(p, v) => self.volume_attr(n, p, v),
            Node::Snapshot(p, v, s) => {
                let vol = self.volume(p, v)?;
                let (uuid, info) = vol
                    .read(|x| {
                        (
                            x.meta().uuid,
                            x.snapshots().into_iter().find(|i| &i.name == s),
                        )
                    })
                    .ok_or_else(|| closing(&vol))?;
                let info = info.ok_or(Errno::ENOENT)?;
                let mut o = self.owners.get(&owners::key(&uuid));
                o.mode &= 0o444;
                Ok(self.file_attr(
                    n,
                    o,
                    info.size,
                    info.allocated,
                    unix_time(info.created_unix),
                ))
            }
            Node::StatusFile(_) => {
                let o = Owner {
                    mode: 0o444,
                    uid: self.uid,
                    gid: self.gid,
                };
                Ok(self.file_attr(n, o, 0, 0, SystemTime::now()))
            }
            dir => Ok(self.dir_attr(dir)),
        }
    }

    /// The child `name` of directory `parent`, if it exists.
    fn child(&self, parent: &Node, name: &OsStr) -> Result<Node, Errno> {
        let name = name_str(name).ok_or(Errno::ENOENT)?;
        if crate::names::check_name("name", name).is_err()
            && !matches!(parent, Node::Root | Node::Status)
        {
            return Err(Errno::ENOENT);
        }
        let has_pool = |p: &str| self.svc.pool_names().iter().any(|n| n == p);
        let n = match parent {
            Node::Root => match name {
                "pools" => Node::Pools,
                "snapshots" => Node::Snapshots,
                "status" => Node::Status,
                _ => return Err(Errno::ENOENT),
            },
            Node::Pools if has_pool(name) => Node::Pool(name.into()),
            Node::Snapshots if has_pool(name) => Node::SnapPool(name.into()),
            Node::Pool(p) if self.volume_exists(p, name)? => Node::Volume(p.clone(), name.into()),
            Node::SnapPool(p) if self.volume_exists(p, name)? => {
                Node::SnapVolume(p.clone(), name.into())
            }
            Node::SnapVolume(p, v) => {
                let vol = self.volume(p, v)?;
                let found = vol
                    .read(|x| x.snapshots().iter().any(|s| s.name == name))
                    .ok_or_else(|| closing(&vol))?;
                if !found {
                    return Err(Errno::ENOENT);
                }
                Node::Snapshot(p.clone(), v.clone(), name.into())
            }
            Node::Status => Node::StatusFile(status::file(name).ok_or(Errno::ENOENT)?),
            _ => return Err(Errno::ENOENT),
        };
        Ok(n)
    }

    /// Entries of a directory, `.` and `..` first.
    fn entries(&self, dir: &Node) -> Result<Vec<(Node, String)>, Errno> {
        let mut out = vec![
            (dir.clone(), ".".to_string()),
            (dir.parent(), "..".to_string()),
        ];
        let vols = |p: &str| -> Result<Vec<String>, Errno> {
            self.rt.block_on(self.svc.volumes(p)).map_err(|e| errno(&e))
        };
        match dir {
            Node::Root => {
                for (n, s) in [
                    (Node::Pools, "pools"),
                    (Node::Snapshots, "snapshots"),
                    (Node::Status, "status"),
                ] {
                    out.push((n, s.into()));
                }
            }
            Node::Pools => out.extend(
                self.svc
                    .pool_names()
                    .into_iter()
                    .map(|p| (Node::Pool(p.clone()), p)),
            ),
            Node::Snapshots => out.extend(
                self.svc
                    .pool_names()
                    .into_iter()
                    .map(|p| (Node::SnapPool(p.clone()), p)),
            ),
            Node::Pool(p) => out.extend(
                vols(p)?
                    .into_iter()
                    .map(|v| (Node::Volume(p.clone(), v.clone()), v)),
            ),
            Node::SnapPool(p) => out.extend(
                vols(p)?
                    .into_iter()
                    .map(|v| (Node::SnapVolume(p.clone(), v.clone()), v)),
            ),
            Node::SnapVolume(p, v) => {
                let vol = self.volume(p, v)?;
                let snaps = vol.read(|x| x.snapshots()).ok_or_else(|| closing(&vol))?;
                out.extend(
                    snaps
                        .into_iter()
                        .map(|s| (Node::Snapshot(p.clone(), v.clone(), s.name.clone()), s.name)),
                );
            }
            Node::Status => out.extend(
                status::FILES
                    .iter()
                    .map(|f| (Node::StatusFile(f), f.to_string())),
            ),
            _ => return Err(Errno::ENOTDIR),
        }
        Ok(out)
    }

    /// `(total, free, avail)` bytes for `statfs`: of the data directory's file system at the
    /// root, of the pool's store (local file system or HDFS cluster) inside a pool.
    fn statfs_of(&self, pool: Option<&str>) -> Result<(u64, u64, u64), Errno> {
        let sp = match pool {
            None => crate::fsutil::space_of(&self.data_dir),
            Some(p) => self.rt.block_on(self.svc.pool_space(p)),
        }
        .map_err(|e| errno(&e))?;
        Ok((sp.total, sp.free, sp.avail))
    }

    /// Resizes a volume through the service (so D-Bus announces it).
    fn truncate(&self, pool: &str, name: &str, size: u64) -> Result<(), Errno> {
        self.rt
            .block_on(self.svc.truncate(
                Admin::vouched_by_fuse(Caller {
                    uid: self.uid,
                    gids: Vec::new(),
                }),
                pool,
                name,
                size,
            ))
            .map(drop)
            .map_err(|e| errno(&e))
    }

    fn do_write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let h = self.handle(fh)?;
        let Open::Volume {
            vol,
            encoder,
            writable,
        } = &*h
        else {
            return Err(Errno::EBADF);
        };
        if !writable {
            return Err(Errno::EBADF);
        }
        // A write past the end grows the volume, as a regular file grows: image formats that
        // append (qcow2, vmdk, vhdx as files, what virt-manager creates by default) need it,
        // and a thin volume grows for free (the gap reads as zeros, stores nothing).
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= hlfs_engine::MAX_SIZE)
            .ok_or(Errno::EFBIG)?;
        let enc = encoder.encode(offset, data);
        let r = vol
            .with(|v| {
                // Under the volume's lock: two writers growing at once both land.
                if end > v.size() {
                    v.resize(end)?;
                }
                match enc {
                    Some(e) => v.write_encoded(e),
                    None => v.write(offset, data),
                }
            })
            .ok_or_else(|| closing(vol))?;
        vol.mark_changed();
        r.map_err(|e| engine_errno("write", vol, e))?;
        Ok(data.len() as u32)
    }

    fn do_fsync(&self, fh: FileHandle) -> Result<(), Errno> {
        let h = self.handle(fh)?;
        let Open::Volume { vol, .. } = &*h else {
            return Ok(());
        };
        let wait = vol
            .with(|v| v.flush_begin())
            .ok_or_else(|| closing(vol))?
            .map_err(|e| engine_errno("flush", vol, e))?;
        if let Err(e) = wait.wait() {
            let msg = e.to_string();
            // Recorded: the volume refuses writes until reopened (what reached disk is unknown).
            let _ = vol.with(|v| v.flush_end(Err(e)));
            tracing::error!(volume = vol.name(), error = %msg, "FUSE view: flush failed");
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn do_read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let h = self.handle(fh)?;
        let (vol, snap) = match &*h {
            Open::Status(b) => {
                let s = (offset.min(b.len() as u64)) as usize;
                let e = (s + size as usize).min(b.len());
                return Ok(b[s..e].to_vec());
            }
            Open::Volume { vol, .. } => (vol, None),
            Open::Snapshot { vol, snap } => (vol, Some(snap)),
        };
        vol.read(|v| {
            let end = match snap {
                Some(s) => v.snapshot_size(s)?,
                None => v.size(),
            };
            // Reads past the end return 0 bytes (EOF), as on any file.
            let n = u64::from(size).min(end.saturating_sub(offset)) as usize;
            let mut buf = vec![0u8; n];
            if n > 0 {
                match snap {
                    Some(s) => v.read_snapshot(s, offset, &mut buf)?,
                    None => v.read(offset, &mut buf)?,
                }
            }
            Ok(buf)
        })
        .ok_or_else(|| closing(vol))?
        .map_err(|e| engine_errno("read", vol, e))
    }

    /// SEEK_DATA / SEEK_HOLE from the extent map (what `cp --sparse`, qemu-img and libvirt
    /// use to copy only data).
    fn do_seek(&self, fh: FileHandle, offset: i64, whence: i32) -> Result<i64, Errno> {
        let h = self.handle(fh)?;
        let (vol, snap) = match &*h {
            Open::Volume { vol, .. } => (vol, None),
            Open::Snapshot { vol, snap } => (vol, Some(snap)),
            Open::Status(_) => return Err(Errno::EINVAL),
        };
        let want_data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return Err(Errno::EINVAL),
        };
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let found = vol
            .read(|v| -> hlfs_engine::Result<Option<u64>> {
                let size = match snap {
                    Some(s) => v.snapshot_size(s)?,
                    None => v.size(),
                };
                let mut pos = offset;
                while pos < size {
                    let len = SEEK_WINDOW.min(size - pos);
                    let ranges = match snap {
                        Some(s) => v.snapshot_allocation(s, pos, len)?,
                        None => v.allocation(pos, len)?,
                    };
                    if let Some((start, _, _)) = ranges.iter().find(|r| r.2 == want_data) {
                        return Ok(Some((*start).max(offset)));
                    }
                    pos += len;
                }
                // The end of the file is a hole (an implicit one) for SEEK_HOLE.
                Ok((!want_data && offset < size).then_some(size))
            })
            .ok_or_else(|| closing(vol))?
            .map_err(|e| engine_errno("map", vol, e))?;
        let pos = found.ok_or(Errno::ENXIO)?;
        i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)
    }

    fn do_fallocate(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let Node::Volume(pool, name) = self.node(ino)? else {
            return Err(Errno::EROFS);
        };
        let h = self.handle(fh)?;
        let Open::Volume { vol, writable, .. } = &*h else {
            return Err(Errno::EBADF);
        };
        if !writable {
            return Err(Errno::EBADF);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let size = vol.read(|v| v.size()).ok_or_else(|| closing(vol))?;
        let grow = |this: &Self| -> Result<(), Errno> {
            if !keep_size && end > size {
                this.truncate(&pool, &name, end)?;
            }
            Ok(())
        };
        let clip = |s: u64| (offset.min(s), end.min(s));
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            // Thin volumes reserve nothing: mode 0 only grows the file to cover the range.
            0 => grow(self),
            m if m == libc::FALLOC_FL_PUNCH_HOLE && keep_size => {
                let (s, e) = clip(size);
                vol.with(|v| v.trim(s, e - s))
                    .ok_or_else(|| closing(vol))?
                    .map_err(|e| engine_errno("punch a hole in", vol, e))?;
                vol.mark_changed();
                Ok(())
            }
            libc::FALLOC_FL_ZERO_RANGE => {
                grow(self)?;
                let size = vol.read(|v| v.size()).ok_or_else(|| closing(vol))?;
                let (s, e) = clip(size);
                vol.with(|v| v.write_zeroes(s, e - s))
                    .ok_or_else(|| closing(vol))?
                    .map_err(|e| engine_errno("zero", vol, e))?;
                vol.mark_changed();
                Ok(())
            }
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// The pool whose directory is `dir`, where volumes are created and deleted: EROFS in the
    /// snapshot tree, EPERM anywhere else.
    fn pool_dir(&self, dir: INodeNo) -> Result<String, Errno> {
        match self.node(dir)? {
            Node::Pool(pool) => Ok(pool),
            Node::SnapPool(_) | Node::SnapVolume(..) | Node::Snapshots => Err(Errno::EROFS),
            _ => Err(Errno::EPERM),
        }
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, FileHandle), Errno> {
        let pool = self.pool_dir(parent)?;
        let name = new_name("volume", name)?;
        let admin = self.admin(req)?;
        self.rt
            .block_on(self.svc.create_empty_volume(admin, &pool, &name))
            .map_err(|e| errno(&e))?;
        tracing::info!(volume = %format!("{pool}/{name}"), uid = req.uid(), "FUSE view: created volume");
        let vol = self.volume(&pool, &name)?;
        let uuid = vol.read(|v| v.meta().uuid).ok_or_else(|| closing(&vol))?;
        let owner = Owner {
            mode: mode & !umask & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
        };
        self.owners
            .set(&owners::key(&uuid), owner)
            .map_err(|e| errno(&e))?;
        let node = Node::Volume(pool, name);
        let attr = self.attr(&node)?;
        let encoder = vol.read(|v| v.encoder()).ok_or_else(|| closing(&vol))?;
        let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let fh = self.add_handle(Open::Volume {
            vol,
            encoder,
            writable,
        });
        Ok((attr, fh))
    }

    fn do_open(&self, ino: INodeNo, flags: OpenFlags) -> Result<(FileHandle, FopenFlags), Errno> {
        let writable = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let open = match self.node(ino)? {
            Node::Volume(p, v) => {
                let vol = self.volume(&p, &v)?;
                let encoder = vol.read(|v| v.encoder()).ok_or_else(|| closing(&vol))?;
                Open::Volume {
                    vol,
                    encoder,
                    writable,
                }
            }
            Node::Snapshot(p, v, s) => {
                if writable {
                    return Err(Errno::EROFS);
                }
                Open::Snapshot {
                    vol: self.volume(&p, &v)?,
                    snap: s,
                }
            }
            Node::StatusFile(f) => {
                if writable {
                    return Err(Errno::EACCES);
                }
                Open::Status(self.rt.block_on(status::render(&self.svc, f)))
            }
            _ => return Err(Errno::EISDIR),
        };
        Ok((self.add_handle(open), OPEN_FLAGS))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
    ) -> Result<FileAttr, Errno> {
        let node = self.node(ino)?;
        let changes_owner = mode.is_some() || uid.is_some() || gid.is_some();
        match &node {
            Node::Volume(p, v) => {
                if let Some(s) = size {
                    self.truncate(p, v, s)?;
                }
                if changes_owner {
                    // The kernel checked the caller owns the file (chmod) or is privileged
                    // (chown): default_permissions.
                    let vol = self.volume(p, v)?;
                    let uuid = vol.read(|x| x.meta().uuid).ok_or_else(|| closing(&vol))?;
                    let k = owners::key(&uuid);
                    let mut o = self.owners.get(&k);
                    if let Some(m) = mode {
                        o.mode = m & 0o7777;
                    }
                    o.uid = uid.unwrap_or(o.uid);
                    o.gid = gid.unwrap_or(o.gid);
                    self.owners.set(&k, o).map_err(|e| errno(&e))?;
                }
            }
            Node::Snapshot(..) if size.is_some() || changes_owner => return Err(Errno::EROFS),
            _ if size.is_some() => return Err(Errno::EISDIR),
            // libvirt's pool-build makes the directory, then sets its mode (0711 by default)
            // and removes it again if that fails. Who may use a pool is the daemon's rule
            // (root and group hlfs), not a directory mode, so it is accepted and not kept.
            Node::Pool(pool) if changes_owner => {
                tracing::debug!(pool = %pool, ?mode, ?uid, ?gid, "FUSE view: mode or owner of a pool directory accepted, not kept");
            }
            _ if changes_owner => return Err(Errno::EPERM),
            // Times: accepted and not kept (`touch` on a volume file works).
            _ => {}
        }
        self.attr(&node)
    }

    fn do_unlink(&self, req: &Request, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        let pool = self.pool_dir(parent)?;
        let name = name_str(name).ok_or(Errno::ENOENT)?;
        if !self.volume_exists(&pool, name)? {
            return Err(Errno::ENOENT);
        }
        let admin = self.admin(req)?;
        // The key first; the reference is dropped before the delete (it would count as a user).
        let key = {
            let vol = self.volume(&pool, name)?;
            vol.read(|v| owners::key(&v.meta().uuid))
        };
        self.rt
            .block_on(self.svc.delete_volume(admin, &pool, name))
            .map_err(|e| errno(&e))?;
        tracing::info!(volume = %format!("{pool}/{name}"), uid = req.uid(), "FUSE view: deleted volume");
        if let Some(k) = key {
            if let Err(e) = self.owners.remove(&k) {
                tracing::warn!(error = %e, "FUSE view: could not forget a deleted volume's owner");
            }
        }
        Ok(())
    }

    fn do_mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        match self.node(parent)? {
            Node::Pools => {}
            Node::Snapshots | Node::SnapPool(_) | Node::SnapVolume(..) => return Err(Errno::EROFS),
            _ => return Err(Errno::EPERM),
        }
        let name = new_name("pool", name)?;
        let admin = self.admin(req)?;
        let uri = PoolUri::Local(self.data_dir.join("pools").join(&name)).to_uri();
        let added = self
            .rt
            .block_on(self.svc.create_pool(admin, &name, &uri))
            .map_err(|e| errno(&e))?;
        if !added {
            return Err(Errno::EEXIST);
        }
        tracing::info!(pool = %name, %uri, uid = req.uid(), "FUSE view: created pool");
        Ok(self.dir_attr(&Node::Pool(name)))
    }

    fn do_rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr) -> Result<(), Errno> {
        match self.node(parent)? {
            Node::Pools => {}
            Node::Snapshots | Node::SnapPool(_) | Node::SnapVolume(..) => return Err(Errno::EROFS),
            _ => return Err(Errno::EPERM),
        }
        let name = name_str(name).ok_or(Errno::ENOENT)?;
        if !self.svc.pool_names().iter().any(|p| p == name) {
            return Err(Errno::ENOENT);
        }
        let admin = self.admin(req)?;
        match self.rt.block_on(self.svc.delete_pool(admin, name)) {
            Ok(_) => {
                tracing::info!(pool = %name, uid = req.uid(), "FUSE view: deleted pool");
                Ok(())
            }
            // A pool with volumes: what rmdir says of a directory with files.
            Err(Error::Busy(_)) => Err(Errno::ENOTEMPTY),
            Err(e) => Err(errno(&e)),
        }
    }
}

impl fuser::Filesystem for HlfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is a wish: an older kernel without it still works.
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self
            .node(parent)
            .and_then(|p| self.child(&p, name))
            .and_then(|n| self.attr(&n));
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).and_then(|n| self.attr(&n)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino, mode, uid, gid, size) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mkdir(req, parent, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_unlink(req, parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_rmdir(req, parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        // Volumes are not renamed (their NBD export names and clones' base locations would
        // break). EPERM rather than EXDEV, so that `mv` does not copy a whole disk instead.
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino, flags) {
            Ok((fh, f)) => reply.opened(fh, f),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(req, parent, name, mode, umask, flags) {
            Ok((a, fh)) => reply.created(&TTL, &a, Generation(0), fh, OPEN_FLAGS),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(fh, offset, size) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a durability point (as on local file systems): fsync is.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.handles).remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_fsync(fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.node(ino).and_then(|n| self.entries(&n)) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        for (i, (node, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            let kind = if node.is_dir() {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            let ino = if node == Node::Root {
                INodeNo(ROOT_INO)
            } else {
                self.ino(&node)
            };
            if reply.add(ino, i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Creates and deletes are durable when they return.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let node = self.node(ino).unwrap_or(Node::Root);
        match self.statfs_of(node.pool()) {
            Ok((total, free, avail)) => {
                let bs = 4096u64;
                reply.statfs(
                    total / bs,
                    free / bs,
                    avail / bs,
                    0,
                    0,
                    bs as u32,
                    hlfs_client::names::MAX_NAME as u32,
                    bs as u32,
                )
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.do_fallocate(ino, fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.do_seek(fh, offset, whence) {
            Ok(p) => reply.offset(p),
            Err(e) => reply.error(e),
        }
    }
}
