-- Backend.AI ranked-model app-config tables: the plain PostgreSQL DDL equivalent to the
-- final state of upstream's Alembic chain
--   9fc9e6bfe695 -> 2d6443ac0d4a -> a8e06485829f -> 66d0f891ed20 -> a560420476b6
--   -> e5b71c94d2a8 -> b93d1c47af52
-- read at github.com/lablup/backend.ai commit c0032c472e4b40e0eb012bdd1cd3f081854dd891
-- (main, 2026-08-23). See upstream_migration.py for the verbatim migration code.
--
-- VERIFIED: the migrations (run through Alembic with upstream's naming convention) and this
-- file were each applied to an empty PostgreSQL 16.x database (pgserver); `pg_dump
-- --schema-only` of the two is identical (verify_ddl.py in this directory).
--
-- Facts worth keeping in mind:
--  * There is NO PostgreSQL enum type. scope_type is VARCHAR(64) holding 'public' |
--    'domain' | 'user' (upstream StrEnumType(AppConfigScopeType) = VARCHAR(64), stores
--    .value). Nothing in the DB restricts the values except the composite FK (an allow-list
--    row must exist) and the check constraint (public <=> scope_id IS NULL).
--  * rank has NO server default; the defaults 100/200/300 are applied in Python
--    (AppConfigScopeType.default_rank() in AppConfigAllowListCreator.build_row).
--  * updated_at has only DEFAULT now(); the ORM's onupdate=func.now() is client-side, and
--    the fragment upsert sets updated_at = now() explicitly. No DB trigger maintains it.
--  * No FK from scope_id to users.uuid / domains.id: deleting a user or a domain leaves its
--    fragments in place (no cascade, no code purge).
--  * No secondary indexes beyond the PK / UNIQUE constraints' own indexes.
--  * Column order is the migration's (allow_list.rank was ADDed last by 66d0f891ed20),
--    which differs from the ORM's declaration order (id, config_name, scope_type, rank,
--    created_at, updated_at). Only the order differs.
--  * uuid_generate_v4() needs the uuid-ossp extension (upstream's init migration
--    5de06da3c2b5 creates it).
--  * UNIQUE NULLS NOT DISTINCT needs PostgreSQL 15+ (upstream requires 16+).

CREATE EXTENSION IF NOT EXISTS "uuid-ossp";

CREATE TABLE app_config_definitions (
    id          UUID                     NOT NULL DEFAULT uuid_generate_v4(),
    config_name VARCHAR(128)             NOT NULL,
    created_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    updated_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    CONSTRAINT pk_app_config_definitions PRIMARY KEY (id),
    CONSTRAINT uq_app_config_definitions_config_name UNIQUE (config_name)
);

CREATE TABLE app_config_allow_list (
    id          UUID                     NOT NULL DEFAULT uuid_generate_v4(),
    config_name VARCHAR(128)             NOT NULL,
    scope_type  VARCHAR(64)              NOT NULL,
    created_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    updated_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    rank        INTEGER                  NOT NULL,
    CONSTRAINT pk_app_config_allow_list PRIMARY KEY (id),
    CONSTRAINT uq_app_config_allow_list_config_name_scope_type UNIQUE (config_name, scope_type),
    CONSTRAINT fk_app_config_allow_list_config_name_app_config_definitions
        FOREIGN KEY (config_name) REFERENCES app_config_definitions (config_name)
        ON DELETE CASCADE
);

CREATE TABLE app_config_fragments (
    id          UUID                     NOT NULL DEFAULT uuid_generate_v4(),
    config_name VARCHAR(128)             NOT NULL,
    scope_type  VARCHAR(64)              NOT NULL,
    scope_id    UUID,
    config      JSONB                    NOT NULL,
    created_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    updated_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    CONSTRAINT pk_app_config_fragments PRIMARY KEY (id),
    CONSTRAINT uq_app_config_fragments_config_name_scope_type_scope_id
        UNIQUE NULLS NOT DISTINCT (config_name, scope_type, scope_id),
    CONSTRAINT ck_app_config_fragments_scope_id_matches_scope_type
        CHECK ((scope_type = 'public') = (scope_id IS NULL)),
    CONSTRAINT fk_app_config_fragments_config_name_scope_type
        FOREIGN KEY (config_name, scope_type)
        REFERENCES app_config_allow_list (config_name, scope_type)
        ON DELETE CASCADE
);
