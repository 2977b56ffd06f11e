-- The interactions a refresh sees (DESIGN §5): every interaction before the refresh interval's end, flagged where
-- it falls in the interval [starts, ends), with the interval's end beside it. Empty outside a refresh.
with refresh_window as (
    {{ refresh_window() }}
)

select
    interactions.*,
    interactions.rated_at >= refresh_window.starts as in_window,
    refresh_window.ends as refresh_end
from {{ ref('int_interactions') }} as interactions, refresh_window
where interactions.rated_at < refresh_window.ends
