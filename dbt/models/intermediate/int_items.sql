-- The item attribute the protocol uses: the first genre for movies, the second-level category for books.
select
    item_id,
    title,
    release_year,
    genres,
    categories,
    brand,
    {% if var('domain') == 'movies' %} genres[1] {% else %} categories[2] {% endif %} as category
from {{ ref('stg_items') }}
