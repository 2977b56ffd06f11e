-- For every interaction, the K interactions before it (K = var history_length): the behaviour history a
-- sample at that position sees. Lists are aligned and oldest first.
select
    user_id,
    position,
    event_timestamp,
    coalesce(list(item_id) over preceding, []) as history_item_ids,
    coalesce(list(category) over preceding, []) as history_categories,
    coalesce(list(coalesce(brand, '')) over preceding, []) as history_brands,  -- '': no brand (movies)
    coalesce(list(rating) over preceding, []) as history_ratings
from {{ ref('int_interactions') }}
window preceding as (
    partition by user_id
    order by position
    rows between {{ var('history_length') }} preceding and 1 preceding
)
