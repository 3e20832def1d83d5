-- The service schema of tpm2-attest at commit 939a279 (before migrations), sqlite DDL,
-- generated from that commit's src/tpm2_attest/service/store.py with SQLAlchemy's CreateTable.
CREATE TABLE devices (
	id VARCHAR(64) NOT NULL, 
	enrolled_at DATETIME NOT NULL, 
	revoked_at DATETIME, 
	ek_public BLOB NOT NULL, 
	ek_name BLOB NOT NULL, 
	ek_key_id BLOB, 
	ek_cert_fingerprint VARCHAR(64), 
	ek_cert_verified BOOLEAN NOT NULL, 
	ak_public BLOB NOT NULL, 
	ak_public_der BLOB NOT NULL, 
	ak_name BLOB NOT NULL, 
	ak_format VARCHAR(8) NOT NULL, 
	PRIMARY KEY (id)
);
CREATE UNIQUE INDEX ux_devices_active_ek ON devices (ek_name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX ux_devices_active_ek_key ON devices (ek_key_id) WHERE revoked_at IS NULL;
CREATE TABLE enrollments (
	id VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME NOT NULL, 
	ek_public BLOB NOT NULL, 
	ek_name BLOB NOT NULL, 
	ek_cert_fingerprint VARCHAR(64), 
	ek_cert_verified BOOLEAN NOT NULL, 
	nonce BLOB NOT NULL, 
	ak_public BLOB, 
	ak_public_der BLOB, 
	ak_name BLOB, 
	ak_format VARCHAR(8), 
	secret_hash BLOB, 
	device_id VARCHAR(64), 
	failure VARCHAR(64), 
	PRIMARY KEY (id)
);
CREATE INDEX ix_enrollments_ek_name ON enrollments (ek_name);
CREATE TABLE attestations (
	id INTEGER NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	challenge_id VARCHAR(64) NOT NULL, 
	at DATETIME NOT NULL, 
	ok BOOLEAN NOT NULL, 
	code VARCHAR(64), 
	detail TEXT, 
	result JSON, 
	PRIMARY KEY (id), 
	FOREIGN KEY(device_id) REFERENCES devices (id)
);
CREATE INDEX ix_attestations_device_id ON attestations (device_id);
CREATE TABLE challenges (
	id VARCHAR(64) NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	nonce BLOB NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME NOT NULL, 
	consumed_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(device_id) REFERENCES devices (id)
);
CREATE INDEX ix_challenges_device_id ON challenges (device_id);
