-- One row: the protocol settings (dbt vars) these marts were built with, exported beside them, so that a consumer
-- can check that its own agree: training refuses a K that is not the K of the histories it is given.
select
    '{{ var("dataset") }}' as dataset,
    '{{ var("protocol") }}' as protocol,
    {{ var('llm_history_length') }}::integer as llm_history_length,
    {{ var('train_fraction') }}::double as train_fraction,
    {{ var('history_length') }}::integer as history_length,
    {{ var('prompt_history_length') }}::integer as prompt_history_length,
    '{{ var("valid_strategy") }}' as valid_strategy,
    {{ var('valid_fraction') }}::double as valid_fraction,
    {{ var('kar_test_user_fraction') }}::double as kar_test_user_fraction,
    {{ var('kar_history_limit') }}::integer as kar_history_limit,
    {{ var('positive_threshold') }}::double as positive_threshold,
    {{ var('seed') }}::bigint as seed,
    {{ "'" ~ var('refresh_start') ~ "+00'" if var('refresh_start', none) is not none else 'null' }}::timestamptz as refresh_start,
    {{ "'" ~ var('refresh_end') ~ "+00'" if var('refresh_end', none) is not none else 'null' }}::timestamptz as refresh_end
