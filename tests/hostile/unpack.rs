//! Unpacking hostile layers: nothing resolved outside the root.
