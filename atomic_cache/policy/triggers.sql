-- The cache follows the database: whatever writes these tables (this package, another
-- service, psql, a migration), statement-level triggers record in the writer's own
-- transaction what the change must invalidate, one outbox row per registered cache (key
-- prefix), and wake the replayers with a NOTIFY at commit.
--
-- Each trigger sees its statement's rows through transition tables, so a one-statement
-- UPDATE of 100,000 rows costs one outbox row per cache, not 100,000. PostgreSQL allows
-- transition tables only on single-event triggers without column lists: one trigger per
-- event, and the functions compare old and new rows themselves (a statement trigger also
-- fires when no row changed; it then records nothing).
--
-- Targets are what InvalidationTarget stores: [[scope_type, scope_id, [names] | null]].
-- TRUNCATE has no transition table: it invalidates everything and the catalogue.
--
-- The triggers are ENABLE ALWAYS: they fire also under session_replication_role =
-- replica (pg_restore, tools that set it), since a cache over a restored database must
-- hear of those changes too. (A logical replication subscriber's apply worker fires row
-- triggers only, never statement triggers: its changes are not seen.)
--
-- The functions every model's triggers share (app_config_fan_out, app_config_slices) are
-- in fan_out.sql, installed first.
--
-- Installed by create_schema (and Alembic revision 0002), idempotently.

-- Fragments: the slices of every row inserted, deleted, or changed by an update (its
-- slice before and after, when its scope, id, name or value changed).
CREATE OR REPLACE FUNCTION app_config_fragments_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  slices jsonb;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT jsonb_agg(jsonb_build_array(scope_type, scope_id, name)) INTO slices
    FROM new_rows;
  ELSIF TG_OP = 'DELETE' THEN
    SELECT jsonb_agg(jsonb_build_array(scope_type, scope_id, name)) INTO slices
    FROM old_rows;
  ELSE
    SELECT jsonb_agg(jsonb_build_array(scope_type, scope_id, name)) INTO slices FROM (
      (SELECT scope_type, scope_id, name, extra_config FROM old_rows
       EXCEPT SELECT scope_type, scope_id, name, extra_config FROM new_rows)
      UNION
      (SELECT scope_type, scope_id, name, extra_config FROM new_rows
       EXCEPT SELECT scope_type, scope_id, name, extra_config FROM old_rows)
    ) AS changed;
  END IF;
  PERFORM app_config_fan_out(app_config_slices(slices), false);
  RETURN NULL;
END $$;

-- Policies: a policy created or deleted changes that name for everyone and the catalogue
-- of names; a changed scope list (the merge order) changes that name for everyone.
CREATE OR REPLACE FUNCTION app_config_policies_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  names jsonb;
  renamed boolean := TG_OP <> 'UPDATE';
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT jsonb_agg(config_name) INTO names FROM new_rows;
  ELSIF TG_OP = 'DELETE' THEN
    SELECT jsonb_agg(config_name) INTO names FROM old_rows;
  ELSE
    SELECT jsonb_agg(DISTINCT config_name) INTO names FROM (
      (SELECT config_name, scope_sources FROM old_rows
       EXCEPT SELECT config_name, scope_sources FROM new_rows)
      UNION
      (SELECT config_name, scope_sources FROM new_rows
       EXCEPT SELECT config_name, scope_sources FROM old_rows)
    ) AS changed;
    SELECT EXISTS (
      (SELECT config_name FROM old_rows EXCEPT SELECT config_name FROM new_rows)
      UNION ALL
      (SELECT config_name FROM new_rows EXCEPT SELECT config_name FROM old_rows)
    ) INTO renamed;
  END IF;
  IF names IS NOT NULL THEN
    PERFORM app_config_fan_out(jsonb_build_array(jsonb_build_array('public', 'public', names)),
                               renamed);
  END IF;
  RETURN NULL;
END $$;

-- Users: a user deleted, or moved to another domain, changes every name of that user.
CREATE OR REPLACE FUNCTION app_config_users_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  targets jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN
    SELECT jsonb_agg(jsonb_build_array('user', uuid::text, NULL)) INTO targets FROM old_rows;
  ELSE
    SELECT jsonb_agg(jsonb_build_array('user', uuid::text, NULL)) INTO targets FROM (
      (SELECT uuid, domain_name FROM old_rows EXCEPT SELECT uuid, domain_name FROM new_rows)
      UNION
      (SELECT uuid, domain_name FROM new_rows EXCEPT SELECT uuid, domain_name FROM old_rows)
    ) AS moved;
  END IF;
  PERFORM app_config_fan_out(targets, false);
  RETURN NULL;
END $$;

-- Domains: a domain deleted or renamed changes every entry filled under its old name
-- (its users, moved by the foreign key's ON UPDATE CASCADE, are covered by theirs).
CREATE OR REPLACE FUNCTION app_config_domains_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  targets jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN
    SELECT jsonb_agg(jsonb_build_array('domain', name, NULL)) INTO targets FROM old_rows;
  ELSE
    SELECT jsonb_agg(jsonb_build_array('domain', name, NULL)) INTO targets FROM (
      SELECT name FROM old_rows EXCEPT SELECT name FROM new_rows
    ) AS renamed;
  END IF;
  PERFORM app_config_fan_out(targets, false);
  RETURN NULL;
END $$;

-- TRUNCATE: no rows to look at; every entry and the catalogue go.
CREATE OR REPLACE FUNCTION app_config_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM app_config_fan_out('[["public", "public", null]]'::jsonb, true);
  RETURN NULL;
END $$;

-- One trigger per table and event (transition tables allow no more), all ENABLE ALWAYS.
DROP TRIGGER IF EXISTS app_config_fragments_inserted ON app_config_fragments;
CREATE TRIGGER app_config_fragments_inserted AFTER INSERT ON app_config_fragments
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_fragments_changed();
DROP TRIGGER IF EXISTS app_config_fragments_updated ON app_config_fragments;
CREATE TRIGGER app_config_fragments_updated AFTER UPDATE ON app_config_fragments
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_fragments_changed();
DROP TRIGGER IF EXISTS app_config_fragments_deleted ON app_config_fragments;
CREATE TRIGGER app_config_fragments_deleted AFTER DELETE ON app_config_fragments
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_fragments_changed();
DROP TRIGGER IF EXISTS app_config_fragments_truncated ON app_config_fragments;
CREATE TRIGGER app_config_fragments_truncated AFTER TRUNCATE ON app_config_fragments
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_truncated();

DROP TRIGGER IF EXISTS app_config_policies_inserted ON app_config_policies;
CREATE TRIGGER app_config_policies_inserted AFTER INSERT ON app_config_policies
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_policies_changed();
DROP TRIGGER IF EXISTS app_config_policies_updated ON app_config_policies;
CREATE TRIGGER app_config_policies_updated AFTER UPDATE ON app_config_policies
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_policies_changed();
DROP TRIGGER IF EXISTS app_config_policies_deleted ON app_config_policies;
CREATE TRIGGER app_config_policies_deleted AFTER DELETE ON app_config_policies
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_policies_changed();
DROP TRIGGER IF EXISTS app_config_policies_truncated ON app_config_policies;
CREATE TRIGGER app_config_policies_truncated AFTER TRUNCATE ON app_config_policies
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_truncated();

DROP TRIGGER IF EXISTS app_config_users_updated ON users;
CREATE TRIGGER app_config_users_updated AFTER UPDATE ON users
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_users_changed();
DROP TRIGGER IF EXISTS app_config_users_deleted ON users;
CREATE TRIGGER app_config_users_deleted AFTER DELETE ON users
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_users_changed();
DROP TRIGGER IF EXISTS app_config_users_truncated ON users;
CREATE TRIGGER app_config_users_truncated AFTER TRUNCATE ON users
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_truncated();

DROP TRIGGER IF EXISTS app_config_domains_updated ON domains;
CREATE TRIGGER app_config_domains_updated AFTER UPDATE ON domains
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_domains_changed();
DROP TRIGGER IF EXISTS app_config_domains_deleted ON domains;
CREATE TRIGGER app_config_domains_deleted AFTER DELETE ON domains
  REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_domains_changed();
DROP TRIGGER IF EXISTS app_config_domains_truncated ON domains;
CREATE TRIGGER app_config_domains_truncated AFTER TRUNCATE ON domains
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_truncated();

ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_fragments_inserted;
ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_fragments_updated;
ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_fragments_deleted;
ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_fragments_truncated;
ALTER TABLE app_config_policies ENABLE ALWAYS TRIGGER app_config_policies_inserted;
ALTER TABLE app_config_policies ENABLE ALWAYS TRIGGER app_config_policies_updated;
ALTER TABLE app_config_policies ENABLE ALWAYS TRIGGER app_config_policies_deleted;
ALTER TABLE app_config_policies ENABLE ALWAYS TRIGGER app_config_policies_truncated;
ALTER TABLE users ENABLE ALWAYS TRIGGER app_config_users_updated;
ALTER TABLE users ENABLE ALWAYS TRIGGER app_config_users_deleted;
ALTER TABLE users ENABLE ALWAYS TRIGGER app_config_users_truncated;
ALTER TABLE domains ENABLE ALWAYS TRIGGER app_config_domains_updated;
ALTER TABLE domains ENABLE ALWAYS TRIGGER app_config_domains_deleted;
ALTER TABLE domains ENABLE ALWAYS TRIGGER app_config_domains_truncated;
