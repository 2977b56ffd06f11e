-- Feature table: demographics, known from a user's first interaction on.
select
    first_seen.user_id,
    first_seen.event_timestamp,
    users.age,
    users.gender,
    users.occupation,
    users.zip_code
from (
    select user_id, min(event_timestamp) as event_timestamp
    from {{ ref('int_interactions') }}
    group by user_id
) as first_seen
left join {{ ref('stg_users') }} as users using (user_id)
order by first_seen.user_id
