-- Every interaction with its place in the protocol (DESIGN §3): each user's interactions ordered by
-- (UTC day, original file order), a 0-based position, and the period it belongs to: history (LLM only),
-- train, valid (carved from train) or test.
--
-- event_timestamp keeps the day resolution the ordering uses: the interaction's UTC day plus its rank within
-- that user's day in seconds, so it is strictly increasing along each user's positions. The raw time is rated_at.

with ordered as (
    select
        user_id,
        item_id,
        rating,
        rated_at_epoch,
        file_order,
        rated_at_epoch // 86400 as rated_day,
        row_number() over (partition by user_id order by rated_at_epoch // 86400, file_order) - 1 as position,
        row_number() over (partition by user_id, rated_at_epoch // 86400 order by file_order) - 1 as rank_in_day,
        count(*) over (partition by user_id) as n_interactions
    from {{ ref('stg_ratings') }}
),

boundaries as (
    -- history_end: first position that may be a CTR sample; train_end: last train position (inclusive)
    select distinct
        user_id,
        {% if var('protocol') == 'r4ec' %}
            {{ var('llm_history_length') }} as history_end,
            cast(floor({{ var('train_fraction') }}::double * n_interactions) as bigint) as train_end
        {% else %}
            least((n_interactions + 1) // 2, {{ var('kar_history_limit') }}) as history_end,
            case
                when {{ hash_fraction(['user_id']) }} < {{ var('kar_test_user_fraction') }}
                    then least((n_interactions + 1) // 2, {{ var('kar_history_limit') }}) - 1
                else n_interactions - 1
            end as train_end
        {% endif %}
    from ordered
),

periods as (
    select
        ordered.*,
        case
            when ordered.position < boundaries.history_end then 'history'
            when ordered.position <= boundaries.train_end then 'train'
            else 'test'
        end as period
    from ordered
    inner join boundaries using (user_id)
),

splits as (
    -- valid is carved from each user's train positions. temporal (default): the last ceil(valid_fraction * m) of
    -- the user's m train positions (at least one), so no train sample's history holds a valid label; decimal
    -- arithmetic, so that 28 % of 25 is 7, not ceil(7.000000000000001) = 8. last: the last train position.
    -- fraction: a seeded share of train positions, wherever they fall.
    select
        *,
        case
            when period != 'train' then period
            {% if var('valid_strategy') == 'temporal' %}
                when position > max(position) filter (where period = 'train') over user_periods
                    - ceil(
                        count(*) filter (where period = 'train') over user_periods
                        * {{ var('valid_fraction') }}::decimal(18, 9)
                    )
            {% elif var('valid_strategy') == 'last' %}
                when position = max(position) filter (where period = 'train') over user_periods
            {% else %}
                when {{ hash_fraction(['user_id', 'position']) }} < {{ var('valid_fraction') }}
            {% endif %}
                then 'valid'
            else 'train'
        end as split
    from periods
    window user_periods as (partition by user_id)
)

select
    splits.user_id,
    splits.item_id,
    splits.position,
    splits.n_interactions,
    splits.split,
    splits.rating,
    cast(splits.rating > {{ var('positive_threshold') }} as integer) as label,
    to_timestamp(splits.rated_day * 86400 + splits.rank_in_day) as event_timestamp,
    to_timestamp(splits.rated_at_epoch) as rated_at,
    splits.file_order,
    items.title,
    items.release_year,
    items.category,
    items.brand
from splits
left join {{ ref('int_items') }} as items using (item_id)
