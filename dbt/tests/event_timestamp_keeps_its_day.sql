-- The rank-within-day seconds never push an interaction into the next UTC day.
select user_id, position, event_timestamp, rated_at
from {{ ref('int_interactions') }}
where date_trunc('day', event_timestamp) != date_trunc('day', rated_at)
