select
    cast(user_id as varchar) as user_id,
    cast(age as integer) as age,
    gender,
    occupation,
    zip_code
from {{ source('raw', 'users') }}
