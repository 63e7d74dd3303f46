-- The cache follows the ranked model's database: whatever writes app_config_fragments,
-- app_config_allow_list or app_config_definitions (this package, Backend.AI's manager,
-- psql, a migration), statement-level triggers record in the writer's own transaction
-- what the change must invalidate, through the functions the policy model's triggers use
-- too (../db/fan_out.sql: one outbox row per registered cache, except the writer's own,
-- and a NOTIFY at commit).
--
-- As the policy model's: one trigger per table and event (transition tables allow no
-- more), a one-statement change of any number of rows is one outbox row per cache, a
-- statement that changed nothing records nothing, TRUNCATE invalidates everything and the
-- catalogue, and every trigger is ENABLE ALWAYS (it fires under session_replication_role
-- = replica too).
--
-- What each change records (targets as InvalidationTarget stores them: [[scope_type,
-- scope_id, [names] | null]]; a public slice is ["public", "public", [name]], a domain's
-- or a user's ["domain" | "user", uuid as text, [name]]):
--   fragments inserted or deleted   the slice of each row
--   fragments updated               the slice before and after of each row whose name,
--                                   scope, scope id or config changed (the old rows that
--                                   are not among the new, and the new not among the old)
--   grant's rank changed            the public slice of its name: its order, for everyone
--   grant created or deleted        the slices of fragments of that (name, scope) still
--                                   there afterwards: none while the foreign key holds. A
--                                   grant's delete cascades to its fragments, whose own
--                                   trigger records each of them (PostgreSQL fires it once
--                                   for the outer statement, with every cascaded row).
--   grant's name or scope changed   likewise, for the pairs gone and come (the foreign key
--                                   allows it only where no fragment refers to them)
--   definition created              the catalogue only (no merge changes)
--   definition deleted or renamed   the public slice of each name and the catalogue
--   TRUNCATE                        everything and the catalogue
--
-- Recorded once: a definition's delete cascades to its grants and their fragments, whose
-- triggers fire after the definition's. The definition's trigger notes, for the rest of
-- the transaction, that every entry of its names is covered; the fragment and grant
-- triggers leave those names out (the outbox is delivered after the commit, so a name
-- covered anywhere in the transaction is covered for all of it). A TRUNCATE notes that
-- everything is. The note holds only for the transaction, and for the writer's own
-- prefix it was made under (atomic_cache.own_prefix): a cache excluded then is not left
-- out later.
--
-- Installed by atomic_cache.ranked.create_schema, after ../db/fan_out.sql, idempotently.

-- The note's key: this transaction, and the cache prefix its writes are excluded for.
CREATE OR REPLACE FUNCTION app_config_ranked_mark() RETURNS text
LANGUAGE sql VOLATILE AS $$
  SELECT pg_current_xact_id()::text || ':'
         || md5(coalesce(current_setting('atomic_cache.own_prefix', true), '')) || ' '
$$;

-- What this transaction has covered already: {"all": bool, "names": {name: true}}.
CREATE OR REPLACE FUNCTION app_config_ranked_covered() RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  stored text := coalesce(current_setting('atomic_cache.ranked_covered', true), '');
  mark text := app_config_ranked_mark();
BEGIN
  IF starts_with(stored, mark) THEN
    RETURN substr(stored, length(mark) + 1)::jsonb;
  END IF;
  RETURN '{"all": false, "names": {}}'::jsonb;
END $$;

-- Note that every entry of these names (a jsonb array), or of everything, is covered.
CREATE OR REPLACE FUNCTION app_config_ranked_cover(covering jsonb, everything boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  covered jsonb := app_config_ranked_covered();
  added jsonb;
BEGIN
  SELECT jsonb_object_agg(n, true) INTO added FROM jsonb_array_elements_text(covering) AS n;
  PERFORM set_config(
    'atomic_cache.ranked_covered',
    app_config_ranked_mark() || jsonb_build_object(
      'all', (covered ->> 'all')::boolean OR everything,
      'names', (covered -> 'names') || coalesce(added, '{}'::jsonb)
    )::text,
    true);
END $$;

-- A fragment row's slice [scope, id, name]; NULL for a scope no read sees.
CREATE OR REPLACE FUNCTION app_config_ranked_slice(scope text, id uuid, config_name text)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN scope = 'public' THEN jsonb_build_array('public', 'public', config_name)
    WHEN scope IN ('domain', 'user') AND id IS NOT NULL
      THEN jsonb_build_array(scope, id::text, config_name)
  END
$$;

-- Fragments: the slice of every row inserted or deleted; of an update, each changed row's
-- slice before and after.
CREATE OR REPLACE FUNCTION app_config_ranked_fragments_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  covered jsonb := app_config_ranked_covered();
  slices jsonb;
BEGIN
  IF (covered ->> 'all')::boolean THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    SELECT jsonb_agg(slice) FILTER (WHERE slice IS NOT NULL) INTO slices
    FROM new_rows AS r,
         LATERAL app_config_ranked_slice(r.scope_type, r.scope_id, r.config_name) AS slice
    WHERE NOT ((covered -> 'names') ? r.config_name);
  ELSIF TG_OP = 'DELETE' THEN
    SELECT jsonb_agg(slice) FILTER (WHERE slice IS NOT NULL) INTO slices
    FROM old_rows AS r,
         LATERAL app_config_ranked_slice(r.scope_type, r.scope_id, r.config_name) AS slice
    WHERE NOT ((covered -> 'names') ? r.config_name);
  ELSE
    SELECT jsonb_agg(slice) FILTER (WHERE slice IS NOT NULL) INTO slices
    FROM (
      (SELECT config_name, scope_type, scope_id, config FROM old_rows
       EXCEPT SELECT config_name, scope_type, scope_id, config FROM new_rows)
      UNION ALL
      (SELECT config_name, scope_type, scope_id, config FROM new_rows
       EXCEPT SELECT config_name, scope_type, scope_id, config FROM old_rows)
    ) AS r,
    LATERAL app_config_ranked_slice(r.scope_type, r.scope_id, r.config_name) AS slice
    WHERE NOT ((covered -> 'names') ? r.config_name);
  END IF;
  PERFORM app_config_fan_out(app_config_slices(slices), false);
  RETURN NULL;
END $$;

-- The allow-list: a changed rank reorders its name for everyone; a grant created, deleted
-- or moved to another (name, scope) changes the fragments of that pair that are there
-- after the statement (none while the foreign key holds: a deleted grant's fragments are
-- gone by then, recorded by their own trigger).
CREATE OR REPLACE FUNCTION app_config_ranked_allow_list_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  covered jsonb := app_config_ranked_covered();
  reordered jsonb;
  slices jsonb;
BEGIN
  IF (covered ->> 'all')::boolean THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'UPDATE' THEN
    SELECT jsonb_agg(DISTINCT o.config_name) INTO reordered
    FROM old_rows AS o JOIN new_rows AS n USING (config_name, scope_type)
    WHERE o.rank IS DISTINCT FROM n.rank AND NOT ((covered -> 'names') ? o.config_name);
    SELECT jsonb_agg(slice) FILTER (WHERE slice IS NOT NULL) INTO slices
    FROM app_config_fragments AS f
    JOIN (
      (SELECT config_name, scope_type FROM old_rows
       EXCEPT SELECT config_name, scope_type FROM new_rows)
      UNION
      (SELECT config_name, scope_type FROM new_rows
       EXCEPT SELECT config_name, scope_type FROM old_rows)
    ) AS moved USING (config_name, scope_type),
    LATERAL app_config_ranked_slice(f.scope_type, f.scope_id, f.config_name) AS slice
    WHERE NOT ((covered -> 'names') ? f.config_name);
  ELSIF TG_OP = 'INSERT' THEN
    SELECT jsonb_agg(slice) FILTER (WHERE slice IS NOT NULL) INTO slices
    FROM app_config_fragments AS f
    JOIN (SELECT DISTINCT config_name, scope_type FROM new_rows) AS granted
      USING (config_name, scope_type),
    LATERAL app_config_ranked_slice(f.scope_type, f.scope_id, f.config_name) AS slice
    WHERE NOT ((covered -> 'names') ? f.config_name);
  ELSE
    SELECT jsonb_agg(slice) FILTER (WHERE slice IS NOT NULL) INTO slices
    FROM app_config_fragments AS f
    JOIN (SELECT DISTINCT config_name, scope_type FROM old_rows) AS revoked
      USING (config_name, scope_type),
    LATERAL app_config_ranked_slice(f.scope_type, f.scope_id, f.config_name) AS slice
    WHERE NOT ((covered -> 'names') ? f.config_name);
  END IF;
  IF reordered IS NOT NULL THEN
    slices := coalesce(slices, '[]'::jsonb) || (
      SELECT jsonb_agg(jsonb_build_array('public', 'public', n))
      FROM jsonb_array_elements(reordered) AS n);
  END IF;
  PERFORM app_config_fan_out(app_config_slices(slices), false);
  IF reordered IS NOT NULL THEN
    PERFORM app_config_ranked_cover(reordered, false);
  END IF;
  RETURN NULL;
END $$;

-- Definitions: a name created changes the catalogue only; a name deleted or renamed
-- changes that name for everyone (its grants and fragments went with it) and the
-- catalogue.
CREATE OR REPLACE FUNCTION app_config_ranked_definitions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  changed jsonb;
BEGIN
  IF (app_config_ranked_covered() ->> 'all')::boolean THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    IF EXISTS (SELECT FROM new_rows) THEN
      PERFORM app_config_fan_out('[]'::jsonb, true);
    END IF;
    RETURN NULL;
  ELSIF TG_OP = 'DELETE' THEN
    SELECT jsonb_agg(DISTINCT config_name) INTO changed FROM old_rows;
  ELSE
    SELECT jsonb_agg(config_name) INTO changed FROM (
      (SELECT config_name FROM old_rows EXCEPT SELECT config_name FROM new_rows)
      UNION
      (SELECT config_name FROM new_rows EXCEPT SELECT config_name FROM old_rows)
    ) AS renamed;
  END IF;
  IF changed IS NOT NULL THEN
    PERFORM app_config_fan_out(
      jsonb_build_array(jsonb_build_array('public', 'public', changed)), true);
    PERFORM app_config_ranked_cover(changed, false);
  END IF;
  RETURN NULL;
END $$;

-- TRUNCATE (of one table or, by CASCADE, of all three: recorded once).
CREATE OR REPLACE FUNCTION app_config_ranked_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT (app_config_ranked_covered() ->> 'all')::boolean THEN
    PERFORM app_config_fan_out('[["public", "public", null]]'::jsonb, true);
    PERFORM app_config_ranked_cover(NULL, true);
  END IF;
  RETURN NULL;
END $$;

-- One trigger per table and event, all ENABLE ALWAYS. CREATE OR REPLACE TRIGGER (no DROP:
-- that would take an ACCESS EXCLUSIVE lock on a table Backend.AI reads).
CREATE OR REPLACE TRIGGER app_config_ranked_fragments_inserted
  AFTER INSERT ON app_config_fragments REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_fragments_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_fragments_updated
  AFTER UPDATE ON app_config_fragments REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_fragments_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_fragments_deleted
  AFTER DELETE ON app_config_fragments REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_fragments_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_fragments_truncated
  AFTER TRUNCATE ON app_config_fragments
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_truncated();

CREATE OR REPLACE TRIGGER app_config_ranked_allow_list_inserted
  AFTER INSERT ON app_config_allow_list REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_allow_list_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_allow_list_updated
  AFTER UPDATE ON app_config_allow_list REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_allow_list_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_allow_list_deleted
  AFTER DELETE ON app_config_allow_list REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_allow_list_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_allow_list_truncated
  AFTER TRUNCATE ON app_config_allow_list
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_truncated();

CREATE OR REPLACE TRIGGER app_config_ranked_definitions_inserted
  AFTER INSERT ON app_config_definitions REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_definitions_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_definitions_updated
  AFTER UPDATE ON app_config_definitions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_definitions_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_definitions_deleted
  AFTER DELETE ON app_config_definitions REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_definitions_changed();
CREATE OR REPLACE TRIGGER app_config_ranked_definitions_truncated
  AFTER TRUNCATE ON app_config_definitions
  FOR EACH STATEMENT EXECUTE FUNCTION app_config_ranked_truncated();

ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_ranked_fragments_inserted;
ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_ranked_fragments_updated;
ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_ranked_fragments_deleted;
ALTER TABLE app_config_fragments ENABLE ALWAYS TRIGGER app_config_ranked_fragments_truncated;
ALTER TABLE app_config_allow_list ENABLE ALWAYS TRIGGER app_config_ranked_allow_list_inserted;
ALTER TABLE app_config_allow_list ENABLE ALWAYS TRIGGER app_config_ranked_allow_list_updated;
ALTER TABLE app_config_allow_list ENABLE ALWAYS TRIGGER app_config_ranked_allow_list_deleted;
ALTER TABLE app_config_allow_list ENABLE ALWAYS TRIGGER app_config_ranked_allow_list_truncated;
ALTER TABLE app_config_definitions ENABLE ALWAYS TRIGGER app_config_ranked_definitions_inserted;
ALTER TABLE app_config_definitions ENABLE ALWAYS TRIGGER app_config_ranked_definitions_updated;
ALTER TABLE app_config_definitions ENABLE ALWAYS TRIGGER app_config_ranked_definitions_deleted;
ALTER TABLE app_config_definitions ENABLE ALWAYS TRIGGER app_config_ranked_definitions_truncated;
