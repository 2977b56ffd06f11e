{#- The refresh interval [starts, ends) as a one-row relation; no row when no interval is given, so that every
    refresh mart is empty outside a refresh. -#}
{% macro refresh_window() -%}
    {% if var('refresh_end', none) is not none %}
        select
            '{{ var("refresh_start") }}+00'::timestamptz as starts,
            '{{ var("refresh_end") }}+00'::timestamptz as ends
    {% else %}
        select null::timestamptz as starts, null::timestamptz as ends
        where false
    {% endif %}
{%- endmacro %}
