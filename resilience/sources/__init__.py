"""Sources feed the backup engine a stream of entries: path, metadata, content on demand."""
