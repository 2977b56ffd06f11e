{#- A seeded, stable pseudo-random number in [0, 1) from the given columns: the same on every run and engine. -#}
{% macro hash_fraction(columns) -%}
    (('0x' || left(md5(concat_ws(':', '{{ var("seed") }}', {{ columns | join(", ") }})), 8))::bigint / 4294967296.0)
{%- endmacro %}
