//! The LXD importer (next commit).
