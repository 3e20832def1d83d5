"""TPM 2.0 constants under their spec names (TPM 2.0 Library Part 2: Structures)."""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Final

TPM_GENERATED_VALUE: Final = 0xFF544347
"""Magic in every TPMS_ATTEST produced by a TPM (0xff 'TCG')."""


class TPM_ST(IntEnum):
    """Structure tags (Part 2, 6.9)."""

    RSP_COMMAND = 0x00C4
    NULL = 0x8000
    NO_SESSIONS = 0x8001
    SESSIONS = 0x8002
    ATTEST_NV = 0x8014
    ATTEST_COMMAND_AUDIT = 0x8015
    ATTEST_SESSION_AUDIT = 0x8016
    ATTEST_CERTIFY = 0x8017
    ATTEST_QUOTE = 0x8018
    ATTEST_TIME = 0x8019
    ATTEST_CREATION = 0x801A
    ATTEST_NV_DIGEST = 0x801C
    CREATION = 0x8021
    VERIFIED = 0x8022
    AUTH_SECRET = 0x8023
    HASHCHECK = 0x8024
    AUTH_SIGNED = 0x8025
    FU_MANIFEST = 0x8029


class TPM_SU(IntEnum):
    """Startup / shutdown types."""

    CLEAR = 0x0000
    STATE = 0x0001


class TPM_SE(IntEnum):
    """Session types."""

    HMAC = 0x00
    POLICY = 0x01
    TRIAL = 0x03


class TPM_CC(IntEnum):
    """Command codes (Part 2, 6.5.2)."""

    NV_UndefineSpaceSpecial = 0x011F
    EvictControl = 0x0120
    HierarchyControl = 0x0121
    NV_UndefineSpace = 0x0122
    ChangeEPS = 0x0124
    ChangePPS = 0x0125
    Clear = 0x0126
    ClearControl = 0x0127
    ClockSet = 0x0128
    HierarchyChangeAuth = 0x0129
    NV_DefineSpace = 0x012A
    PCR_Allocate = 0x012B
    PCR_SetAuthPolicy = 0x012C
    PP_Commands = 0x012D
    SetPrimaryPolicy = 0x012E
    FieldUpgradeStart = 0x012F
    ClockRateAdjust = 0x0130
    CreatePrimary = 0x0131
    NV_GlobalWriteLock = 0x0132
    GetCommandAuditDigest = 0x0133
    NV_Increment = 0x0134
    NV_SetBits = 0x0135
    NV_Extend = 0x0136
    NV_Write = 0x0137
    NV_WriteLock = 0x0138
    DictionaryAttackLockReset = 0x0139
    DictionaryAttackParameters = 0x013A
    NV_ChangeAuth = 0x013B
    PCR_Event = 0x013C
    PCR_Reset = 0x013D
    SequenceComplete = 0x013E
    SetAlgorithmSet = 0x013F
    SetCommandCodeAuditStatus = 0x0140
    FieldUpgradeData = 0x0141
    IncrementalSelfTest = 0x0142
    SelfTest = 0x0143
    Startup = 0x0144
    Shutdown = 0x0145
    StirRandom = 0x0146
    ActivateCredential = 0x0147
    Certify = 0x0148
    PolicyNV = 0x0149
    CertifyCreation = 0x014A
    Duplicate = 0x014B
    GetTime = 0x014C
    GetSessionAuditDigest = 0x014D
    NV_Read = 0x014E
    NV_ReadLock = 0x014F
    ObjectChangeAuth = 0x0150
    PolicySecret = 0x0151
    Rewrap = 0x0152
    Create = 0x0153
    ECDH_ZGen = 0x0154
    HMAC = 0x0155
    Import = 0x0156
    Load = 0x0157
    Quote = 0x0158
    RSA_Decrypt = 0x0159
    HMAC_Start = 0x015B
    SequenceUpdate = 0x015C
    Sign = 0x015D
    Unseal = 0x015E
    PolicySigned = 0x0160
    ContextLoad = 0x0161
    ContextSave = 0x0162
    ECDH_KeyGen = 0x0163
    EncryptDecrypt = 0x0164
    FlushContext = 0x0165
    LoadExternal = 0x0167
    MakeCredential = 0x0168
    NV_ReadPublic = 0x0169
    PolicyAuthorize = 0x016A
    PolicyAuthValue = 0x016B
    PolicyCommandCode = 0x016C
    PolicyCounterTimer = 0x016D
    PolicyCpHash = 0x016E
    PolicyLocality = 0x016F
    PolicyNameHash = 0x0170
    PolicyOR = 0x0171
    PolicyTicket = 0x0172
    ReadPublic = 0x0173
    RSA_Encrypt = 0x0174
    StartAuthSession = 0x0176
    VerifySignature = 0x0177
    ECC_Parameters = 0x0178
    FirmwareRead = 0x0179
    GetCapability = 0x017A
    GetRandom = 0x017B
    GetTestResult = 0x017C
    Hash = 0x017D
    PCR_Read = 0x017E
    PolicyPCR = 0x017F
    PolicyRestart = 0x0180
    ReadClock = 0x0181
    PCR_Extend = 0x0182
    PCR_SetAuthValue = 0x0183
    NV_Certify = 0x0184
    EventSequenceComplete = 0x0185
    HashSequenceStart = 0x0186
    PolicyPhysicalPresence = 0x0187
    PolicyDuplicationSelect = 0x0188
    PolicyGetDigest = 0x0189
    TestParms = 0x018A
    Commit = 0x018B
    PolicyPassword = 0x018C
    ZGen_2Phase = 0x018D
    EC_Ephemeral = 0x018E
    PolicyNvWritten = 0x018F
    PolicyTemplate = 0x0190
    CreateLoaded = 0x0191
    PolicyAuthorizeNV = 0x0192
    EncryptDecrypt2 = 0x0193
    AC_GetCapability = 0x0194
    AC_Send = 0x0195
    Policy_AC_SendSelect = 0x0196
    CertifyX509 = 0x0197
    ACT_SetTimeout = 0x0198


class TPM_ALG(IntEnum):
    """Algorithm identifiers (TPM_ALG_ID, TCG Algorithm Registry)."""

    ERROR = 0x0000
    RSA = 0x0001
    TDES = 0x0003
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    MGF1 = 0x0007
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    SM3_256 = 0x0012
    SM4 = 0x0013
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    ECMQV = 0x001D
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CAMELLIA = 0x0026
    SHA3_256 = 0x0027
    SHA3_384 = 0x0028
    SHA3_512 = 0x0029
    CTR = 0x0040
    OFB = 0x0041
    CBC = 0x0042
    CFB = 0x0043
    ECB = 0x0044


TPM_ALG_ID = TPM_ALG


class TPM_ECC_CURVE(IntEnum):
    """ECC curve identifiers."""

    NONE = 0x0000
    NIST_P192 = 0x0001
    NIST_P224 = 0x0002
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005
    BN_P256 = 0x0010
    BN_P638 = 0x0011
    SM2_P256 = 0x0020


class TPM_HT(IntEnum):
    """Handle types (the top octet of a handle)."""

    PCR = 0x00
    NV_INDEX = 0x01
    HMAC_SESSION = 0x02
    LOADED_SESSION = 0x02
    POLICY_SESSION = 0x03
    SAVED_SESSION = 0x03
    PERMANENT = 0x40
    TRANSIENT = 0x80
    PERSISTENT = 0x81
    AC = 0x90


class TPM_RH(IntEnum):
    """Permanent handles."""

    FIRST = 0x40000000
    SRK = 0x40000000
    OWNER = 0x40000001
    REVOKE = 0x40000002
    TRANSPORT = 0x40000003
    OPERATOR = 0x40000004
    ADMIN = 0x40000005
    EK = 0x40000006
    NULL = 0x40000007
    UNASSIGNED = 0x40000008
    PW = 0x40000009
    LOCKOUT = 0x4000000A
    ENDORSEMENT = 0x4000000B
    PLATFORM = 0x4000000C
    PLATFORM_NV = 0x4000000D


TPM_RS_PW: Final = 0x40000009
"""The password authorization session handle."""

# Well-known persistent and NV handles (TCG EK Credential Profile, TCG Provisioning Guidance).
EK_RSA_HANDLE: Final = 0x81010001
EK_ECC_HANDLE: Final = 0x81010002
EK_ECC_P384_HANDLE: Final = 0x81010016
SRK_HANDLE: Final = 0x81000001
NV_EK_CERT_RSA: Final = 0x01C00002
NV_EK_NONCE_RSA: Final = 0x01C00003
NV_EK_TEMPLATE_RSA: Final = 0x01C00004
NV_EK_CERT_ECC: Final = 0x01C0000A
NV_EK_NONCE_ECC: Final = 0x01C0000B
NV_EK_TEMPLATE_ECC: Final = 0x01C0000C
NV_EK_CERT_ECC_P384: Final = 0x01C00016
NV_PLATFORM_CERT: Final = 0x01C08000
NV_EK_CHAIN_FIRST: Final = 0x01C00100
"""First index of the EK certificate chain range (TCG EK Credential Profile 2.x, 2.2.1.5.2):
the intermediate CAs of the EK certificate, DER, concatenated, overflowing into the next index."""
NV_EK_CHAIN_LAST: Final = 0x01C001FF


class TPMA_OBJECT(IntFlag):
    """Object attributes (Part 2, 8.3)."""

    fixedTPM = 0x00000002
    stClear = 0x00000004
    fixedParent = 0x00000010
    sensitiveDataOrigin = 0x00000020
    userWithAuth = 0x00000040
    adminWithPolicy = 0x00000080
    noDA = 0x00000400
    encryptedDuplication = 0x00000800
    restricted = 0x00010000
    decrypt = 0x00020000
    sign_encrypt = 0x00040000
    x509sign = 0x00080000


class TPMA_SESSION(IntFlag):
    """Session attributes (Part 2, 8.4)."""

    continueSession = 0x01
    auditExclusive = 0x02
    auditReset = 0x04
    decrypt = 0x20
    encrypt = 0x40
    audit = 0x80


class TPMA_NV(IntFlag):
    """NV index attributes (Part 2, 13.4)."""

    PPWRITE = 0x00000001
    OWNERWRITE = 0x00000002
    AUTHWRITE = 0x00000004
    POLICYWRITE = 0x00000008
    POLICY_DELETE = 0x00000400
    WRITELOCKED = 0x00000800
    WRITEALL = 0x00001000
    WRITEDEFINE = 0x00002000
    WRITE_STCLEAR = 0x00004000
    GLOBALLOCK = 0x00008000
    PPREAD = 0x00010000
    OWNERREAD = 0x00020000
    AUTHREAD = 0x00040000
    POLICYREAD = 0x00080000
    NO_DA = 0x02000000
    ORDERLY = 0x04000000
    CLEAR_STCLEAR = 0x08000000
    READLOCKED = 0x10000000
    WRITTEN = 0x20000000
    PLATFORMCREATE = 0x40000000
    READ_STCLEAR = 0x80000000


class TPM_CAP(IntEnum):
    """Capability selectors for TPM2_GetCapability."""

    ALGS = 0x00000000
    HANDLES = 0x00000001
    COMMANDS = 0x00000002
    PP_COMMANDS = 0x00000003
    AUDIT_COMMANDS = 0x00000004
    PCRS = 0x00000005
    TPM_PROPERTIES = 0x00000006
    PCR_PROPERTIES = 0x00000007
    ECC_CURVES = 0x00000008
    AUTH_POLICIES = 0x00000009
    ACT = 0x0000000A


PT_FIXED: Final = 0x100
PT_VAR: Final = 0x200


class TPM_PT(IntEnum):
    """TPM properties (Part 2, 6.13)."""

    FAMILY_INDICATOR = PT_FIXED + 0
    LEVEL = PT_FIXED + 1
    REVISION = PT_FIXED + 2
    DAY_OF_YEAR = PT_FIXED + 3
    YEAR = PT_FIXED + 4
    MANUFACTURER = PT_FIXED + 5
    VENDOR_STRING_1 = PT_FIXED + 6
    VENDOR_STRING_2 = PT_FIXED + 7
    VENDOR_STRING_3 = PT_FIXED + 8
    VENDOR_STRING_4 = PT_FIXED + 9
    VENDOR_TPM_TYPE = PT_FIXED + 10
    FIRMWARE_VERSION_1 = PT_FIXED + 11
    FIRMWARE_VERSION_2 = PT_FIXED + 12
    INPUT_BUFFER = PT_FIXED + 13
    HR_TRANSIENT_MIN = PT_FIXED + 14
    HR_PERSISTENT_MIN = PT_FIXED + 15
    HR_LOADED_MIN = PT_FIXED + 16
    ACTIVE_SESSIONS_MAX = PT_FIXED + 17
    PCR_COUNT = PT_FIXED + 18
    PCR_SELECT_MIN = PT_FIXED + 19
    CONTEXT_GAP_MAX = PT_FIXED + 20
    NV_COUNTERS_MAX = PT_FIXED + 22
    NV_INDEX_MAX = PT_FIXED + 23
    MEMORY = PT_FIXED + 24
    CLOCK_UPDATE = PT_FIXED + 25
    CONTEXT_HASH = PT_FIXED + 26
    CONTEXT_SYM = PT_FIXED + 27
    CONTEXT_SYM_SIZE = PT_FIXED + 28
    ORDERLY_COUNT = PT_FIXED + 29
    MAX_COMMAND_SIZE = PT_FIXED + 30
    MAX_RESPONSE_SIZE = PT_FIXED + 31
    MAX_DIGEST = PT_FIXED + 32
    MAX_OBJECT_CONTEXT = PT_FIXED + 33
    MAX_SESSION_CONTEXT = PT_FIXED + 34
    PS_FAMILY_INDICATOR = PT_FIXED + 35
    PS_LEVEL = PT_FIXED + 36
    PS_REVISION = PT_FIXED + 37
    PS_DAY_OF_YEAR = PT_FIXED + 38
    PS_YEAR = PT_FIXED + 39
    SPLIT_MAX = PT_FIXED + 40
    TOTAL_COMMANDS = PT_FIXED + 41
    LIBRARY_COMMANDS = PT_FIXED + 42
    VENDOR_COMMANDS = PT_FIXED + 43
    NV_BUFFER_MAX = PT_FIXED + 44
    MODES = PT_FIXED + 45
    MAX_CAP_BUFFER = PT_FIXED + 46
    PERMANENT = PT_VAR + 0
    STARTUP_CLEAR = PT_VAR + 1
    HR_NV_INDEX = PT_VAR + 2
    HR_LOADED = PT_VAR + 3
    HR_LOADED_AVAIL = PT_VAR + 4
    HR_ACTIVE = PT_VAR + 5
    HR_ACTIVE_AVAIL = PT_VAR + 6
    HR_TRANSIENT_AVAIL = PT_VAR + 7
    HR_PERSISTENT = PT_VAR + 8
    HR_PERSISTENT_AVAIL = PT_VAR + 9
    NV_COUNTERS = PT_VAR + 10
    NV_COUNTERS_AVAIL = PT_VAR + 11
    ALGORITHM_SET = PT_VAR + 12
    LOADED_CURVES = PT_VAR + 13
    LOCKOUT_COUNTER = PT_VAR + 14
    MAX_AUTH_FAIL = PT_VAR + 15
    LOCKOUT_INTERVAL = PT_VAR + 16
    LOCKOUT_RECOVERY = PT_VAR + 17
    NV_WRITE_RECOVERY = PT_VAR + 18
    AUDIT_COUNTER_0 = PT_VAR + 19
    AUDIT_COUNTER_1 = PT_VAR + 20


# Hash algorithm facts used throughout (digest sizes and names).
HASH_SIZES: Final[dict[int, int]] = {
    TPM_ALG.SHA1: 20,
    TPM_ALG.SHA256: 32,
    TPM_ALG.SHA384: 48,
    TPM_ALG.SHA512: 64,
    TPM_ALG.SM3_256: 32,
    TPM_ALG.SHA3_256: 32,
    TPM_ALG.SHA3_384: 48,
    TPM_ALG.SHA3_512: 64,
}

HASH_NAMES: Final[dict[int, str]] = {
    TPM_ALG.SHA1: "sha1",
    TPM_ALG.SHA256: "sha256",
    TPM_ALG.SHA384: "sha384",
    TPM_ALG.SHA512: "sha512",
    TPM_ALG.SM3_256: "sm3_256",
    TPM_ALG.SHA3_256: "sha3_256",
    TPM_ALG.SHA3_384: "sha3_384",
    TPM_ALG.SHA3_512: "sha3_512",
}

HASH_BY_NAME: Final[dict[str, int]] = {v: k for k, v in HASH_NAMES.items()}

PCR_COUNT_DEFAULT: Final = 24
