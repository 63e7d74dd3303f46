-- What every model's triggers share: the outbox row per registered cache, and the
-- grouping of slices into targets. The policy model's triggers (triggers.sql) and the
-- ranked model's (ranked/triggers.sql) call these; each model's install runs this file
-- first (create_schema, ranked.create_schema, Alembic revision 0002), idempotently.
--
-- Targets are what InvalidationTarget stores: [[scope_type, scope_id, [names] | null]].

-- Insert one outbox row per registered cache, except the writer's own: this package's
-- writes set atomic_cache.own_prefix for their transaction, record their own row and
-- invalidate before they return; a second row would only double that invalidation.
CREATE OR REPLACE FUNCTION app_config_fan_out(targets jsonb, drop_catalogue boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  own text := coalesce(current_setting('atomic_cache.own_prefix', true), '');
BEGIN
  IF coalesce(jsonb_array_length(targets), 0) = 0 AND NOT drop_catalogue THEN
    RETURN;
  END IF;
  INSERT INTO app_config_invalidation_outbox (cache_prefix, targets, drop_catalogue)
  SELECT prefix, coalesce(targets, '[]'::jsonb), drop_catalogue
  FROM app_config_cache_prefixes WHERE prefix <> own;
  IF FOUND THEN
    PERFORM pg_notify('app_config_invalidations', '');
  END IF;
END $$;

-- [[scope, id, [names]]] of a set of (scope, id, name) slices.
CREATE OR REPLACE FUNCTION app_config_slices(slices jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_agg(jsonb_build_array(scope, id, names))
  FROM (
    SELECT s ->> 0 AS scope, s ->> 1 AS id, jsonb_agg(DISTINCT s -> 2) AS names
    FROM jsonb_array_elements(slices) AS s
    GROUP BY 1, 2
  ) AS grouped
$$;
