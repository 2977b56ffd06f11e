select
    cast(user_id as varchar) as user_id,
    cast(item_id as varchar) as item_id,
    cast(rating as double) as rating,
    cast("timestamp" as bigint) as rated_at_epoch,
    cast(file_order as bigint) as file_order
from {{ source('raw', 'ratings') }}
