"""FL runs: net keys and what nets report, trusts' SuperNode keys and their registration per net, run events
and result files.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 19:50:00
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('fl_nets', sa.Column('wrapped_key', sa.LargeBinary(), nullable=True))
    op.add_column('fl_nets', sa.Column('fleet_address', sa.String(length=500), nullable=True))
    op.add_column('fl_nets', sa.Column('ca_cert', sa.Text(), nullable=True))
    op.add_column('fl_nets', sa.Column('current_job_id', sa.Uuid(), nullable=True))
    op.add_column('fl_nets', sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('fl_nets', sa.Column('last_error', sa.Text(), nullable=True))
    op.add_column('trusts', sa.Column('fl_node_key', sa.Text(), nullable=True))
    op.create_table('fl_net_nodes',
    sa.Column('net_id', sa.Uuid(), nullable=False),
    sa.Column('trust_id', sa.Uuid(), nullable=False),
    sa.Column('key_sha256', sa.String(length=64), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['net_id'], ['fl_nets.id'], name=op.f('fk_fl_net_nodes_net_id_fl_nets'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trust_id'], ['trusts.id'], name=op.f('fk_fl_net_nodes_trust_id_trusts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('net_id', 'trust_id', name=op.f('pk_fl_net_nodes'))
    )
    op.create_table('fl_events',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('round', sa.Integer(), nullable=True),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['fl_jobs.id'], name=op.f('fk_fl_events_job_id_fl_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fl_events'))
    )
    op.create_index(op.f('ix_fl_events_job_id'), 'fl_events', ['job_id'], unique=False)
    op.create_index('uq_fl_events_digest', 'fl_events', ['job_id', 'digest'], unique=True)
    op.create_table('fl_results',
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['fl_jobs.id'], name=op.f('fk_fl_results_job_id_fl_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'name', name=op.f('pk_fl_results'))
    )


def downgrade() -> None:
    op.drop_table('fl_results')
    op.drop_index('uq_fl_events_digest', table_name='fl_events')
    op.drop_index(op.f('ix_fl_events_job_id'), table_name='fl_events')
    op.drop_table('fl_events')
    op.drop_table('fl_net_nodes')
    op.drop_column('trusts', 'fl_node_key')
    for column in ('last_error', 'last_seen_at', 'current_job_id', 'ca_cert', 'fleet_address', 'wrapped_key'):
        op.drop_column('fl_nets', column)
