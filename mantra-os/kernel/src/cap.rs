//! Capabilities and the derivation tree that makes them revocable.
//!
//! A [`Capability`] is an object reference plus the rights its holder has
//! over the object, plus a [`CapNode`]: the capability's place in a
//! derivation tree, as in seL4. Creating an object mints a *root*
//! capability; `handle_duplicate` *derives* a child capability (same object,
//! a subset of the rights). The holder of any capability can revoke every
//! capability derived from it, transitively, wherever those live (any
//! process's handle table, a message in flight), while its own capability
//! stays valid.
//!
//! # Epoch implementation
//!
//! seL4 revokes by walking the derivation tree and deleting every
//! descendant eagerly. We do it lazily, in O(1) for revocation and
//! O(depth) for a validity check, without child lists or locks:
//!
//! - every node has an *epoch* counter (an atomic, starting at 0);
//! - a derived node records its parent and the parent's epoch at the moment
//!   of derivation;
//! - [`CapNode::revoke_descendants`] increments the node's epoch: every
//!   existing child's recorded epoch no longer matches, so the child is dead,
//!   and so is everything below it (a node is valid only if every link on its
//!   path to the root still matches);
//! - children derived after the revocation record the new epoch and are valid.
//!
//! A dead link never becomes live again (epochs only grow; 64-bit counters
//! do not wrap in practice), so validity is monotonic: once a capability is
//! invalid it stays invalid. That makes [`CapNode::is_valid`] linearizable
//! without a lock: if the walk found every link live, all of them were live
//! when the walk started.
//!
//! The tree depth is bounded by [`MAX_DERIVATION_DEPTH`] so a check costs at
//! most that many steps and dropping a chain recurses at most that deep.
//! Objects referenced by dead capabilities stay alive until the holder's
//! handle table drops them (see `handle::HandleTable::take_reaped`).
#![warn(missing_docs)]

use alloc::sync::Arc;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use mantra_abi::Error;

/// Derivation levels below a root: a root has depth 0, and deriving from a
/// node at this depth fails with [`Error::NoResources`].
pub const MAX_DERIVATION_DEPTH: u32 = 64;

/// A node of the derivation tree. Shared (`Arc`) by the capability it
/// belongs to and by the nodes derived from it (which point at it).
pub struct CapNode {
    /// The node this one was derived from (`None` for a root).
    parent: Option<Arc<CapNode>>,
    /// `parent.epoch` when this node was derived (0 for a root).
    parent_epoch: u64,
    /// Bumped by every revocation of this node's descendants.
    epoch: AtomicU64,
    /// Links between this node and its root.
    depth: u32,
}

impl CapNode {
    /// A new root node: valid until dropped, revocable by nobody above it.
    pub fn root() -> Arc<CapNode> {
        Arc::new(CapNode { parent: None, parent_epoch: 0, epoch: AtomicU64::new(0), depth: 0 })
    }

    /// A new node derived from `parent` at `parent`'s current epoch.
    ///
    /// Does not check `parent`'s validity: a child of a dead node is dead
    /// too (its path to the root crosses the dead link).
    ///
    /// Errors: [`Error::NoResources`] when `parent` is already at
    /// [`MAX_DERIVATION_DEPTH`].
    pub fn derive(parent: &Arc<CapNode>) -> Result<Arc<CapNode>, Error> {
        if parent.depth >= MAX_DERIVATION_DEPTH {
            return Err(Error::NoResources);
        }
        Ok(Arc::new(CapNode {
            parent: Some(Arc::clone(parent)),
            // Acquire pairs with the Release of `revoke_descendants`: if a
            // revocation happened before this derivation, we record the
            // epoch it produced.
            parent_epoch: parent.epoch.load(Ordering::Acquire),
            epoch: AtomicU64::new(0),
            depth: parent.depth + 1,
        }))
    }

    /// Whether no ancestor revoked its descendants since this node's path
    /// was derived: walks to the root (at most [`MAX_DERIVATION_DEPTH`]
    /// steps) comparing every recorded epoch with the parent's current one.
    #[inline]
    pub fn is_valid(&self) -> bool {
        // A root (most capabilities) is valid: no loop to enter (the walk is
        // out of line, so the common case is one compare, without the loop
        // head's alignment padding).
        self.parent.is_none() || self.ancestors_valid()
    }

    /// `is_valid` of a derived node: the walk to the root.
    #[inline(never)]
    fn ancestors_valid(&self) -> bool {
        let mut node = self;
        while let Some(parent) = &node.parent {
            if parent.epoch.load(Ordering::Acquire) != node.parent_epoch {
                return false;
            }
            node = parent;
        }
        true
    }

    /// Kills every node derived from this one, transitively; this node keeps
    /// its validity, and nodes derived from it later are valid. O(1).
    pub fn revoke_descendants(&self) {
        // AcqRel: Release publishes the new epoch to checkers and deriving
        // CPUs; Acquire orders us after earlier revocations.
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Links between this node and its root (0 for a root).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether this node is a root (was not derived).
    pub fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    /// Whether `self` is `other` or was derived from it, transitively
    /// (regardless of validity).
    pub fn descends_from(&self, other: &CapNode) -> bool {
        let mut node = self;
        loop {
            if core::ptr::eq(node, other) {
                return true;
            }
            match &node.parent {
                Some(parent) => node = parent,
                None => return false,
            }
        }
    }
}

impl fmt::Debug for CapNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapNode")
            .field("depth", &self.depth)
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .field("parent_epoch", &self.parent_epoch)
            .finish()
    }
}

/// A capability: an object, the rights held over it (`abi::rights` bits)
/// and the capability's node in the derivation tree.
///
/// Not `Clone` on purpose: copying a capability would create a second
/// holder of the same node, which nobody could revoke separately. Make a
/// new one with [`Capability::derive`] (child node) or
/// [`Capability::new`] (new root).
#[derive(Debug)]
pub struct Capability<O> {
    /// The object (typically an enum of `Arc`s to kernel objects).
    pub object: O,
    /// `abi::rights` bits.
    pub rights: u32,
    /// This capability's node in the derivation tree.
    pub node: Arc<CapNode>,
}

impl<O> Capability<O> {
    /// A root capability: what the kernel mints when it creates an object.
    pub fn new(object: O, rights: u32) -> Self {
        Self { object, rights, node: CapNode::root() }
    }

    /// Whether the capability is still live (not revoked through an
    /// ancestor). O(depth).
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.node.is_valid()
    }

    /// Whether the capability holds every right in `rights`.
    #[inline]
    pub fn has_rights(&self, rights: u32) -> bool {
        self.rights & rights == rights
    }

    /// Kills every capability derived from this one (see
    /// [`CapNode::revoke_descendants`]). Does not check the `REVOKE` right
    /// or validity: that is the caller's (`HandleTable::revoke` does both).
    pub fn revoke_descendants(&self) {
        self.node.revoke_descendants()
    }

    /// Derives a child capability to the same object with `rights`.
    ///
    /// Does *not* require `abi::rights::DUPLICATE`: derivation is also the
    /// kernel's own tool (e.g. when it hands a process a reduced copy of a
    /// capability it minted). `HandleTable::duplicate`, the syscall path,
    /// checks `DUPLICATE` before calling this.
    ///
    /// Errors, in this order: [`Error::BadHandle`] if this capability was
    /// revoked; [`Error::AccessDenied`] if `rights` is not a subset of ours
    /// (including unknown bits); [`Error::NoResources`] when the tree is at
    /// [`MAX_DERIVATION_DEPTH`].
    pub fn derive(&self, rights: u32) -> Result<Capability<O>, Error>
    where
        O: Clone,
    {
        if !self.is_valid() {
            return Err(Error::BadHandle);
        }
        if rights & !self.rights != 0 {
            return Err(Error::AccessDenied);
        }
        let node = CapNode::derive(&self.node)?;
        Ok(Capability { object: self.object.clone(), rights, node })
    }
}

/// A tiny deterministic PRNG (xorshift64*) for the stress tests of this
/// crate's capability, handle, signal and memory modules.
#[cfg(test)]
pub(crate) mod test_rng {
    /// xorshift64* generator.
    pub struct Rng(u64);

    impl Rng {
        /// Seeded generator (seed 0 is remapped).
        pub fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        /// Next 64 random bits.
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform-ish in `0..n` (`n > 0`).
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Index into a collection of `n > 0` elements.
        pub fn index(&mut self, n: usize) -> usize {
            self.below(n as u64) as usize
        }
        /// True with probability `num / den`.
        pub fn chance(&mut self, num: u64, den: u64) -> bool {
            self.below(den) < num
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_rng::Rng;
    use super::*;
    use mantra_abi::rights;
    use std::vec::Vec;

    #[test]
    fn root_is_valid_and_survives_its_own_revocation() {
        let root = CapNode::root();
        assert!(root.is_valid() && root.is_root());
        root.revoke_descendants();
        assert!(root.is_valid());
    }

    #[test]
    fn revocation_kills_descendants_transitively_but_not_self() {
        let root = CapNode::root();
        let a = CapNode::derive(&root).unwrap();
        let b = CapNode::derive(&a).unwrap();
        let c = CapNode::derive(&b).unwrap();
        let sibling = CapNode::derive(&root).unwrap();
        assert!([&a, &b, &c, &sibling].iter().all(|n| n.is_valid()));

        a.revoke_descendants();
        assert!(a.is_valid());
        assert!(!b.is_valid() && !c.is_valid());
        assert!(sibling.is_valid() && root.is_valid());

        // Children derived after the revocation are valid; children of the
        // dead stay dead.
        let b2 = CapNode::derive(&a).unwrap();
        assert!(b2.is_valid());
        let under_dead = CapNode::derive(&b).unwrap();
        assert!(!under_dead.is_valid());

        root.revoke_descendants();
        assert!(root.is_valid());
        assert!(!a.is_valid() && !b2.is_valid() && !sibling.is_valid());
        // Revoking a dead node changes nothing above it.
        a.revoke_descendants();
        assert!(root.is_valid());
    }

    #[test]
    fn depth_is_bounded() {
        let mut node = CapNode::root();
        for depth in 1..=MAX_DERIVATION_DEPTH {
            node = CapNode::derive(&node).unwrap();
            assert_eq!(node.depth(), depth);
        }
        assert_eq!(CapNode::derive(&node).unwrap_err(), Error::NoResources);
        assert!(node.is_valid());
    }

    #[test]
    fn descends_from_follows_parents() {
        let root = CapNode::root();
        let a = CapNode::derive(&root).unwrap();
        let b = CapNode::derive(&a).unwrap();
        let other = CapNode::root();
        assert!(b.descends_from(&root) && b.descends_from(&a) && b.descends_from(&b));
        assert!(!a.descends_from(&b) && !b.descends_from(&other));
    }

    #[test]
    fn capability_derive_checks_validity_then_rights_then_depth() {
        let cap = Capability::new(7u32, rights::READ | rights::WRITE);
        let child = cap.derive(rights::READ).unwrap();
        assert_eq!((child.object, child.rights), (7, rights::READ));
        assert!(child.node.descends_from(&cap.node));
        // Same rights: fine. No rights: fine. Growing: denied. Unknown bits: denied.
        assert!(cap.derive(rights::READ | rights::WRITE).is_ok());
        assert!(cap.derive(0).is_ok());
        assert_eq!(child.derive(rights::WRITE).unwrap_err(), Error::AccessDenied);
        assert_eq!(cap.derive(1 << 31).unwrap_err(), Error::AccessDenied);
        // DUPLICATE is not required by Capability::derive.
        assert!(!cap.has_rights(rights::DUPLICATE));

        // Revoked: BadHandle even when the rights would also be denied.
        cap.revoke_descendants();
        assert!(cap.is_valid() && !child.is_valid());
        assert_eq!(child.derive(rights::ALL).unwrap_err(), Error::BadHandle);

        // Depth: NoResources, but only after rights pass.
        let mut deep = Capability::new((), rights::READ);
        for _ in 0..MAX_DERIVATION_DEPTH {
            deep = deep.derive(rights::READ).unwrap();
        }
        assert_eq!(deep.derive(rights::WRITE).unwrap_err(), Error::AccessDenied);
        assert_eq!(deep.derive(rights::READ).unwrap_err(), Error::NoResources);
    }

    #[test]
    fn dropping_nodes_frees_chains() {
        let root = CapNode::root();
        let weak = {
            let a = CapNode::derive(&root).unwrap();
            let b = CapNode::derive(&a).unwrap();
            Arc::downgrade(&b)
        };
        assert!(weak.upgrade().is_none());
        assert_eq!(Arc::strong_count(&root), 1);
    }

    /// The reference model: an explicit tree where each link is alive or
    /// cut; revocation cuts every current child link of the node.
    struct Model {
        parent: Vec<Option<usize>>,
        link_alive: Vec<bool>,
        children: Vec<Vec<usize>>,
        depth: Vec<u32>,
    }

    impl Model {
        fn valid(&self, mut n: usize) -> bool {
            while let Some(p) = self.parent[n] {
                if !self.link_alive[n] {
                    return false;
                }
                n = p;
            }
            true
        }
    }

    #[test]
    fn random_trees_match_the_model() {
        for seed in 0..20 {
            let mut rng = Rng::new(seed);
            let mut nodes: Vec<Arc<CapNode>> = Vec::new();
            let mut m = Model { parent: Vec::new(), link_alive: Vec::new(), children: Vec::new(), depth: Vec::new() };
            for _ in 0..3000 {
                match rng.below(10) {
                    0 => {
                        nodes.push(CapNode::root());
                        m.parent.push(None);
                        m.link_alive.push(true);
                        m.children.push(Vec::new());
                        m.depth.push(0);
                    }
                    1..=6 if !nodes.is_empty() => {
                        let p = rng.index(nodes.len());
                        let r = CapNode::derive(&nodes[p]);
                        if m.depth[p] >= MAX_DERIVATION_DEPTH {
                            assert_eq!(r.unwrap_err(), Error::NoResources);
                            continue;
                        }
                        nodes.push(r.unwrap());
                        let id = m.parent.len();
                        m.parent.push(Some(p));
                        m.link_alive.push(true);
                        m.children.push(Vec::new());
                        m.depth.push(m.depth[p] + 1);
                        m.children[p].push(id);
                    }
                    _ if !nodes.is_empty() => {
                        let n = rng.index(nodes.len());
                        nodes[n].revoke_descendants();
                        for c in core::mem::take(&mut m.children[n]) {
                            m.link_alive[c] = false;
                        }
                    }
                    _ => {}
                }
                // Spot-check a few nodes every step, everything now and then.
                if rng.chance(1, 50) {
                    for (i, n) in nodes.iter().enumerate() {
                        assert_eq!(n.is_valid(), m.valid(i), "seed {seed} node {i}");
                    }
                } else if !nodes.is_empty() {
                    for _ in 0..4 {
                        let i = rng.index(nodes.len());
                        assert_eq!(nodes[i].is_valid(), m.valid(i), "seed {seed} node {i}");
                    }
                }
            }
            for (i, n) in nodes.iter().enumerate() {
                assert_eq!(n.is_valid(), m.valid(i));
                assert_eq!(n.depth(), m.depth[i]);
            }
        }
    }

    #[test]
    fn concurrent_revocation_is_monotonic() {
        // One thread revokes the root's descendants while others derive and
        // check: a node observed invalid must never be observed valid again.
        let root = CapNode::root();
        let children: Vec<_> = (0..64).map(|_| CapNode::derive(&root).unwrap()).collect();
        let children = Arc::new(children);
        let checkers: Vec<_> = (0..4)
            .map(|_| {
                let children = Arc::clone(&children);
                std::thread::spawn(move || {
                    let mut dead = [false; 64];
                    for _ in 0..2000 {
                        for (i, c) in children.iter().enumerate() {
                            let v = c.is_valid();
                            assert!(!(dead[i] && v), "a revoked node came back");
                            dead[i] |= !v;
                        }
                    }
                })
            })
            .collect();
        root.revoke_descendants();
        for t in checkers {
            t.join().unwrap();
        }
        assert!(children.iter().all(|c| !c.is_valid()));
        assert!(CapNode::derive(&root).unwrap().is_valid());
    }
}
