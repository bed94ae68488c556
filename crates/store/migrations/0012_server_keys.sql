-- Keys of the installation itself (not of a company), stored only wrapped
-- by the master key: the Ed25519 seed that signs backup manifests. The
-- public half is kept beside it so that it can be shown and pinned.
CREATE TABLE server_keys (
  purpose TEXT NOT NULL,              -- backup_signing
  version BIGINT NOT NULL,
  wrapped {blob} NOT NULL,            -- nonce ‖ AES-256-GCM(master key, seed)
  wrap_key_id TEXT NOT NULL,
  public_key {blob} NOT NULL,
  created_at BIGINT NOT NULL,
  PRIMARY KEY (purpose, version)
);
