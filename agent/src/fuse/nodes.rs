//! What each inode of the FUSE view stands for, and the table that numbers them. Numbers are
//! handed out on first sight of a path and kept for the daemon's life, so a path keeps its
//! inode while the kernel caches it; the table grows with the distinct names seen (a few
//! dozen bytes each).

use std::collections::HashMap;

/// One object of the view.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// The mount point.
    Root,
    /// `pools/`
    Pools,
    /// `pools/POOL/`: the pool's volumes, and nothing else (a libvirt `dir` pool reads it).
    Pool(String),
    /// `pools/POOL/VOLUME`: the volume's bytes.
    Volume(String, String),
    /// `snapshots/`
    Snapshots,
    /// `snapshots/POOL/`
    SnapPool(String),
    /// `snapshots/POOL/VOLUME/`
    SnapVolume(String, String),
    /// `snapshots/POOL/VOLUME/SNAPSHOT`: read-only bytes of the snapshot.
    Snapshot(String, String, String),
    /// `status/`
    Status,
    /// `status/NAME`: generated text or JSON.
    StatusFile(&'static str),
}

impl Node {
    /// Whether the node is a directory.
    pub fn is_dir(&self) -> bool {
        !matches!(
            self,
            Node::Volume(..) | Node::Snapshot(..) | Node::StatusFile(_)
        )
    }

    /// The directory holding this node (the root for the root).
    pub fn parent(&self) -> Node {
        match self {
            Node::Root | Node::Pools | Node::Snapshots | Node::Status => Node::Root,
            Node::Pool(_) => Node::Pools,
            Node::Volume(p, _) => Node::Pool(p.clone()),
            Node::SnapPool(_) => Node::Snapshots,
            Node::SnapVolume(p, _) => Node::SnapPool(p.clone()),
            Node::Snapshot(p, v, _) => Node::SnapVolume(p.clone(), v.clone()),
            Node::StatusFile(_) => Node::Status,
        }
    }

    /// The pool this node belongs to, if any (for statfs).
    pub fn pool(&self) -> Option<&str> {
        match self {
            Node::Pool(p)
            | Node::Volume(p, _)
            | Node::SnapPool(p)
            | Node::SnapVolume(p, _)
            | Node::Snapshot(p, _, _) => Some(p),
            _ => None,
        }
    }
}

/// Inode number <-> node.
#[derive(Debug)]
pub struct Inodes {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Node>,
    next: u64,
}

/// The root's inode number (FUSE's fixed `FUSE_ROOT_ID`).
pub const ROOT_INO: u64 = 1;

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_node: HashMap::new(),
            by_ino: HashMap::new(),
            next: ROOT_INO,
        };
        t.ino(&Node::Root);
        t
    }
}

impl Inodes {
    /// The number of `node`, allocated on first use.
    pub fn ino(&mut self, node: &Node) -> u64 {
        if let Some(i) = self.by_node.get(node) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.by_node.insert(node.clone(), i);
        self.by_ino.insert(i, node.clone());
        i
    }

    /// The node numbered `ino`, if any.
    pub fn node(&self, ino: u64) -> Option<Node> {
        self.by_ino.get(&ino).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_distinct() {
        let mut t = Inodes::default();
        assert_eq!(t.ino(&Node::Root), ROOT_INO);
        let a = t.ino(&Node::Volume("p".into(), "a".into()));
        let b = t.ino(&Node::Snapshot("p".into(), "a".into(), "s".into()));
        assert_ne!(a, b);
        assert_eq!(t.ino(&Node::Volume("p".into(), "a".into())), a);
        assert_eq!(
            t.node(b),
            Some(Node::Snapshot("p".into(), "a".into(), "s".into()))
        );
        assert_eq!(t.node(999), None);
        assert_eq!(
            Node::Snapshot("p".into(), "a".into(), "s".into()).parent(),
            Node::SnapVolume("p".into(), "a".into())
        );
        assert!(!Node::Volume("p".into(), "a".into()).is_dir());
        assert!(Node::Pool("p".into()).is_dir());
    }
}
