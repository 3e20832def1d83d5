-- The service schema of tpm2-attest at commit 939a279 (before migrations), postgresql DDL,
-- generated from that commit's src/tpm2_attest/service/store.py with SQLAlchemy's CreateTable.
CREATE TABLE devices (
	id VARCHAR(64) NOT NULL, 
	enrolled_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	revoked_at TIMESTAMP WITH TIME ZONE, 
	ek_public BYTEA NOT NULL, 
	ek_name BYTEA NOT NULL, 
	ek_key_id BYTEA, 
	ek_cert_fingerprint VARCHAR(64), 
	ek_cert_verified BOOLEAN NOT NULL, 
	ak_public BYTEA NOT NULL, 
	ak_public_der BYTEA NOT NULL, 
	ak_name BYTEA NOT NULL, 
	ak_format VARCHAR(8) NOT NULL, 
	PRIMARY KEY (id)
);
CREATE UNIQUE INDEX ux_devices_active_ek ON devices (ek_name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX ux_devices_active_ek_key ON devices (ek_key_id) WHERE revoked_at IS NULL;
CREATE TABLE enrollments (
	id VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	ek_public BYTEA NOT NULL, 
	ek_name BYTEA NOT NULL, 
	ek_cert_fingerprint VARCHAR(64), 
	ek_cert_verified BOOLEAN NOT NULL, 
	nonce BYTEA NOT NULL, 
	ak_public BYTEA, 
	ak_public_der BYTEA, 
	ak_name BYTEA, 
	ak_format VARCHAR(8), 
	secret_hash BYTEA, 
	device_id VARCHAR(64), 
	failure VARCHAR(64), 
	PRIMARY KEY (id)
);
CREATE INDEX ix_enrollments_ek_name ON enrollments (ek_name);
CREATE TABLE attestations (
	id SERIAL NOT NULL, 
	device_id VARCHAR(64) NOT NULL, 
	challenge_id VARCHAR(64) NOT NULL, 
	at TIMESTAMP WITH TIME ZONE NOT NULL, 
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
	nonce BYTEA NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	consumed_at TIMESTAMP WITH TIME ZONE, 
	PRIMARY KEY (id), 
	FOREIGN KEY(device_id) REFERENCES devices (id)
);
CREATE INDEX ix_challenges_device_id ON challenges (device_id);
