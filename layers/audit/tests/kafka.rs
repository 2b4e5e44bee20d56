//! A mixed consumer run on a real broker, audited to an audit topic.
