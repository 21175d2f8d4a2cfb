"""The column names the tables share, one constant each (``from crossrec import columns as C``; ``F.col(C.USER_ID)``).

Each table's full contract -- every column, its type, nullability and allowed values -- is its
``schemas/<layer>_<table>.yaml``, loaded by :mod:`crossrec.quality.contracts`. Every name here is a column of some
contract, and every column of two or more contracts is here (``tests/quality/test_columns.py``).
"""

__all__ = [
    "USER_ID", "ITEM_ID", "DOMAIN", "LOCAL_USER_ID", "GLOBAL_USER_ID",
    "EVENT_TS", "EVENT_TYPE", "WEIGHT",
    "TITLE", "TEXT", "TEXT_FIELDS", "CATEGORY", "ATTRIBUTES", "ENTITY", "ENTITY_TYPE", "ATTRIBUTE", "VALUE", "VECTORS",
    "RUN_ID", "RUN_DATE", "SOURCE", "SOURCE_FILE", "SOURCE_CHECKSUM", "CORRUPT_RECORD", "INGESTED_AT",
    "REASON", "DETAIL", "RECORD", "SOURCE_TABLE",
    "ITEM_IDX", "DOMAIN_IDX", "DOMAIN_ITEM_IDX", "TRAIN_COUNT",
    "SPLIT", "TARGET_DOMAIN", "TARGET_ITEM_IDX", "TARGET_TS", "COLD_START", "HISTORY_LEN",
    "TEXT_HASH", "ENCODER", "EMBEDDING",
    "RANK", "SCORE", "MODEL_VERSION", "REASON_KIND", "REASON_ENTITY",
    "STAGE", "TABLE_NAME", "DETAILS",
]

# who, what, where: the keys of the interaction and catalog tables
USER_ID = "user_id"  # the user's pseudonym from silver on (bronze: the raw id of the domain)
ITEM_ID = "item_id"
DOMAIN = "domain"
LOCAL_USER_ID = "local_user_id"  # silver.identity_map: the user's id within one domain
GLOBAL_USER_ID = "global_user_id"  # the identity map's cross-domain id of a person

# interactions
EVENT_TS = "event_ts"
EVENT_TYPE = "event_type"
WEIGHT = "weight"

# catalog
TITLE = "title"
TEXT = "text"  # silver.items: the text fields joined, what the text encoder reads
TEXT_FIELDS = "text_fields"  # bronze.items: the raw text columns by name
CATEGORY = "category"
ATTRIBUTES = "attributes"
ENTITY = "entity"  # silver.item_entities: "entity_type:value", what links items (and domains) that share it
ENTITY_TYPE = "entity_type"
ATTRIBUTE = "attribute"  # silver.item_entities: the raw attribute column an entity value came from
VALUE = "value"
VECTORS = "vectors"  # bronze.items: raw vector columns as text; silver.items: modality -> list of floats

# lineage: which run and which file a row came from
RUN_ID = "run_id"
RUN_DATE = "run_date"
SOURCE = "source"  # silver: the bronze source file of the row
SOURCE_FILE = "source_file"
SOURCE_CHECKSUM = "source_checksum"
CORRUPT_RECORD = "corrupt_record"  # bronze: the raw line that did not parse, else null
INGESTED_AT = "ingested_at"

# silver.quarantine (REASON is also gold.recommendations' explanation of a row)
REASON = "reason"
DETAIL = "detail"
RECORD = "record"
SOURCE_TABLE = "source_table"

# gold.item_index: one dense index per item, global and within its domain
ITEM_IDX = "item_idx"
DOMAIN_IDX = "domain_idx"
DOMAIN_ITEM_IDX = "domain_item_idx"
TRAIN_COUNT = "train_count"

# gold.user_sequences
SPLIT = "split"
TARGET_DOMAIN = "target_domain"
TARGET_ITEM_IDX = "target_item_idx"
TARGET_TS = "target_ts"
COLD_START = "cold_start"
HISTORY_LEN = "history_len"

# gold.item_embeddings
TEXT_HASH = "text_hash"
ENCODER = "encoder"
EMBEDDING = "embedding"

# gold.recommendations
RANK = "rank"  # 1-based position in the user's list of one domain
SCORE = "score"
MODEL_VERSION = "model_version"
REASON_KIND = "reason_kind"  # gold.recommendations: history_item | shared_entity | popularity
REASON_ENTITY = "reason_entity"  # gold.recommendations: the entity a shared_entity reason names

# ops tables
STAGE = "stage"
TABLE_NAME = "table_name"
DETAILS = "details"
